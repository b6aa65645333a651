"""The transport conformance suite. Every transport, built-in or plugin, must pass it.

Use it like fsspec's ``tests/abstract``: subclass and provide a ``transport`` fixture
that yields a transport rooted at a fresh, empty location::

    import pytest
    from pipes_bus.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport(self, tmp_path):
            t = MyTransport(f"my://{tmp_path.name}")
            yield t
            t.close()
"""

from __future__ import annotations

import threading

import pytest

from pipes_bus._errors import ObjectTooLargeError
from pipes_bus._log.items import Event
from pipes_bus._log.reader import SessionReader
from pipes_bus._log.writer import ChunkWriter, WriterSettings
from pipes_bus._wire.schema import Closed, Custom
from pipes_bus.transports import Capabilities, Transport

__all__ = ["TransportConformance"]


class TransportConformance:
    """Contract tests for a :class:`~pipes_bus.transports.Transport`."""

    @pytest.fixture
    def transport(self) -> Transport:  # pragma: no cover - subclasses override
        """A transport rooted at a fresh, empty location."""
        raise NotImplementedError("Define a `transport` fixture in the subclass.")

    def test_put_creates_and_get_returns_the_exact_bytes(self, transport: Transport) -> None:
        """put_if_absent creates an object and get returns it byte for byte."""
        data = bytes(range(256)) * 3
        assert transport.put_if_absent("a/b/obj", data) is True
        assert transport.get("a/b/obj") == data

    def test_put_refuses_an_existing_key_and_keeps_the_original(self, transport: Transport) -> None:
        """put_if_absent on an existing key returns False and changes nothing."""
        assert transport.put_if_absent("k", b"first") is True
        assert transport.put_if_absent("k", b"second") is False
        assert transport.get("k") == b"first"

    def test_get_of_a_missing_key_is_none(self, transport: Transport) -> None:
        """get answers None, not an error, for a key that does not exist."""
        assert transport.get("nothing/here") is None

    def test_a_key_that_appears_after_a_miss_is_seen(self, transport: Transport) -> None:
        """No negative caching: a miss followed by a put is then found by get and list."""
        assert transport.get("s/streams/w/00000000000000000000") is None
        assert transport.list("s/streams/w") == []
        assert transport.put_if_absent("s/streams/w/00000000000000000000", b"x") is True
        assert transport.get("s/streams/w/00000000000000000000") == b"x"
        assert transport.list("s/streams/w") == ["00000000000000000000"]
        assert transport.list("s/streams") == ["w"]

    def test_list_gives_sorted_direct_children_once(self, transport: Transport) -> None:
        """list returns the sorted names of direct children, folders once each."""
        for key in ("p/b", "p/a", "p/c/x", "p/c/y", "p/d.json", "q/z"):
            assert transport.put_if_absent(key, b"1")
        assert transport.list("p") == ["a", "b", "c", "d.json"]
        assert transport.list("missing") == []

    def test_list_after_skips_names_up_to_and_including_it(self, transport: Transport) -> None:
        """list(after=name) returns only names that sort after ``name``."""
        for n in range(5):
            assert transport.put_if_absent(f"s/{n:020d}", b"1")
        assert transport.list("s", after=f"{2:020d}") == [f"{3:020d}", f"{4:020d}"]
        assert transport.list("s", after=f"{4:020d}") == []

    def test_delete_removes_and_tolerates_missing(self, transport: Transport) -> None:
        """delete removes an object; deleting a missing one is not an error."""
        assert transport.put_if_absent("d/x", b"1")
        transport.delete("d/x")
        assert transport.get("d/x") is None
        transport.delete("d/x")
        assert transport.put_if_absent("d/x", b"2") is True

    def test_get_refuses_objects_over_max_size(self, transport: Transport) -> None:
        """get(max_size=n) raises ObjectTooLargeError for larger objects, returns smaller ones."""
        assert transport.put_if_absent("big", b"x" * 1000)
        with pytest.raises(ObjectTooLargeError) as info:
            transport.get("big", max_size=999)
        assert "big" in str(info.value)
        assert transport.get("big", max_size=1000) == b"x" * 1000

    def test_concurrent_creates_have_exactly_one_winner(self, transport: Transport) -> None:
        """Eight threads racing to create one key: exactly one wins and its bytes stay."""
        results: dict[int, bool] = {}
        barrier = threading.Barrier(8)

        def race(i: int) -> None:
            barrier.wait()
            results[i] = transport.put_if_absent("race", f"writer-{i}".encode())

        threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, won in results.items() if won]
        assert len(winners) == 1
        assert transport.get("race") == f"writer-{winners[0]}".encode()

    def test_large_objects_round_trip(self, transport: Transport) -> None:
        """A 6 MiB object round-trips intact."""
        data = bytes(range(256)) * (6 * 4096)
        assert transport.put_if_absent("large", data)
        assert transport.get("large") == data

    def test_declares_capabilities_and_counts_requests(self, transport: Transport) -> None:
        """A transport declares Capabilities and counts each request by kind."""
        assert isinstance(transport.capabilities, Capabilities)
        before = transport.stats.snapshot()["requests"]
        transport.put_if_absent("counted", b"abc")
        transport.get("counted")
        transport.list("")
        after = transport.stats.snapshot()["requests"]
        for kind in ("put", "get", "list"):
            assert after.get(kind, 0) - before.get(kind, 0) == 1

    def test_log_round_trip_over_this_transport(self, transport: Transport) -> None:
        """Two writers' messages arrive exactly once, in order, through this transport."""
        settings = WriterSettings(chunk_bytes=2048, linger=0.001)
        writers = [ChunkWriter(transport, "sess", f"w{i}", settings) for i in range(2)]
        for n in range(300):
            for w in writers:
                w.write(Custom(payload={"n": n, "pad": "p" * 20}))
        for w in writers:
            w.close()
        reader = SessionReader(transport, "sess", discover_interval=0)
        items = list(reader.follow(sleep=lambda _: None))
        assert all(isinstance(i, Event) for i in items)
        for name in ("w0", "w1"):
            mine = [i for i in items if isinstance(i, Event) and i.writer == name]
            assert [e.seq for e in mine] == list(range(301))
            payloads = [e.message.payload["n"] for e in mine[:-1]]  # type: ignore[union-attr]
            assert payloads == list(range(300))
            assert isinstance(mine[-1].message, Closed)
