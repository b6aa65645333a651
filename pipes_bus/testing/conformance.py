"""The transport conformance suite. Every transport, built-in or plugin, must pass it.

Use it like fsspec's ``tests/abstract``: subclass a mixin and provide its fixtures.

:class:`TransportConformance`, for any transport, needs one fixture, ``transport``: a
transport rooted at a fresh, empty location::

    import pytest
    from pipes_bus.testing.conformance import TransportConformance

    class TestMyTransport(TransportConformance):
        @pytest.fixture
        def transport(self, tmp_path):
            t = MyTransport(f"my://{tmp_path.name}")
            yield t
            t.close()

:class:`BucketConformance`, for a :class:`~pipes_bus.transports.BucketTransport` that talks
HTTP to a store server (a local one: moto, fake-gcs-server, Azurite, MinIO, ...), adds what
such stores get wrong: requests per operation as the server sees them, empty objects, reads
bounded at ``max_size + 1`` bytes, missing buckets, 503s, unreachable endpoints, listing
pages. It puts a :class:`~pipes_bus.testing.FaultProxy` in front of the server, and needs,
besides ``transport``:

- ``endpoint``: the server's URL (``http://host:port``);
- ``transport_at``: a factory; ``transport_at(endpoint)`` builds a transport on the same
  location as ``transport`` that reaches the store at ``endpoint`` instead. Where the
  transport leaves the store SDK's own retries to the user's configuration, turn them off
  here (the suite checks that one failure is one request);
- ``missing_bucket_transport``: a transport on a bucket that does not exist.

:class:`CredentialsConformance` adds wrong-credential cases, for stores whose local server
checks credentials; it needs ``wrong_credentials_transport``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest

from pipes_bus import (
    ConfigurationError,
    ObjectTooLargeError,
    PermanentStoreError,
    TransientStoreError,
)
from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Closed, Custom
from pipes_bus.orchestrator import Event
from pipes_bus.testing.fault_proxy import FaultProxy, Recorded, Reply
from pipes_bus.testing.servers import free_port
from pipes_bus.transports import BucketTransport, Capabilities, Transport

__all__ = ["OPERATIONS", "BucketConformance", "CredentialsConformance", "TransportConformance"]

#: The four operations, for tests parametrized over them.
OPERATIONS = ("put", "get", "list", "delete")

_SLOW_DOWN: Reply = (
    503,
    {"Content-Type": "application/xml"},
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>",
)

#: ``behind_proxy(inject=None)``: a transport that reaches the store through a new proxy.
BehindProxy = Callable[..., tuple[BucketTransport, FaultProxy]]


def call(transport: Transport, op: str) -> object:
    """Perform one of :data:`OPERATIONS` on the key "k" (or the root, to list)."""
    if op == "put":
        return transport.put_if_absent("k", b"v")
    if op == "get":
        return transport.get("k")
    if op == "list":
        return transport.list("")
    transport.delete("k")
    return None


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

    def test_walk_finds_every_object_below_a_prefix_with_its_size(
        self, transport: Transport
    ) -> None:
        """walk yields each object below the prefix, at any depth, with its size in bytes."""
        objects = {"s/a": b"abc", "s/streams/w/0": b"12345", "s/beats/x": b"", "t/y": b"1"}
        for key, data in objects.items():
            assert transport.put_if_absent(key, data)
        assert sorted(transport.walk("s")) == [("s/a", 3), ("s/beats/x", 0), ("s/streams/w/0", 5)]
        assert list(transport.walk("missing")) == []

    def test_deleting_what_walk_found_leaves_nothing_of_the_prefix(
        self, transport: Transport
    ) -> None:
        """Deleting every key walk found removes the prefix and touches nothing else."""
        for key in ("s/a", "s/streams/w/0", "s/streams/w/1", "t/y"):
            assert transport.put_if_absent(key, b"1")
        for key, _ in list(transport.walk("s")):
            transport.delete(key)
        assert transport.list("s") == []
        assert list(transport.walk("s")) == []
        assert "s" not in transport.list("")
        assert transport.get("t/y") == b"1"

    def test_an_empty_object_reads_back_with_and_without_a_limit(
        self, transport: Transport
    ) -> None:
        """A zero-byte object is b"", whatever the limit (a ranged read of it finds no byte 0)."""
        assert transport.put_if_absent("empty", b"") is True
        assert transport.get("empty") == b""
        assert transport.get("empty", max_size=0) == b""
        assert transport.get("empty", max_size=10) == b""

    def test_get_refuses_objects_over_max_size(self, transport: Transport) -> None:
        """get(max_size=n) raises ObjectTooLargeError naming the key for larger objects,
        returns smaller ones."""
        assert transport.put_if_absent("big", b"x" * 1000)
        with pytest.raises(ObjectTooLargeError) as info:
            transport.get("big", max_size=999)
        assert "big" in str(info.value)
        assert info.value.key == "big"
        assert info.value.size == 1000
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


class BucketConformance(TransportConformance):
    """Contract tests for a :class:`~pipes_bus.transports.BucketTransport` over HTTP."""

    #: How the store answers when it is overloaded (the suite also sends a bare 503).
    busy_reply: ClassVar[Reply] = _SLOW_DOWN
    #: Extra requests a fresh transport spends on its first miss to tell a missing object
    #: from a missing bucket (1 where it has a ``_probe_bucket``).
    probe_requests: ClassVar[int] = 0

    @pytest.fixture
    def transport(self) -> BucketTransport:  # pragma: no cover - subclasses override
        """A transport rooted at a fresh, empty location."""
        raise NotImplementedError("Define a `transport` fixture in the subclass.")

    @pytest.fixture
    def endpoint(self) -> str:  # pragma: no cover - subclasses override
        """The store server's URL, http://host:port."""
        raise NotImplementedError("Define an `endpoint` fixture in the subclass.")

    @pytest.fixture
    def transport_at(self) -> Callable[[str], BucketTransport]:  # pragma: no cover
        """A factory: a transport on ``transport``'s location, reaching the store at the
        endpoint it is given."""
        raise NotImplementedError("Define a `transport_at` fixture in the subclass.")

    @pytest.fixture
    def missing_bucket_transport(self) -> BucketTransport:  # pragma: no cover
        """A transport on a bucket that does not exist."""
        raise NotImplementedError("Define a `missing_bucket_transport` fixture in the subclass.")

    @pytest.fixture
    def behind_proxy(
        self, endpoint: str, transport_at: Callable[[str], BucketTransport]
    ) -> Iterator[BehindProxy]:
        """``behind_proxy(inject=None)``: a transport that reaches the store through a new
        recording :class:`FaultProxy` (answering as ``inject`` says), and the proxy."""
        opened: list[tuple[BucketTransport, FaultProxy]] = []

        def open_behind_proxy(
            inject: Callable[[Recorded], Reply | None] | None = None,
        ) -> tuple[BucketTransport, FaultProxy]:
            proxy = FaultProxy(endpoint, inject=inject).start()
            try:
                transport = transport_at(proxy.url)
            except BaseException:
                proxy.stop()
                raise
            opened.append((transport, proxy))
            return transport, proxy

        yield open_behind_proxy
        for transport, proxy in reversed(opened):
            transport.close()
            proxy.stop()

    def test_a_url_without_a_bucket_is_a_configuration_error(
        self, transport: BucketTransport
    ) -> None:
        """SCHEME:// with no bucket is refused when the transport is built, saying so."""
        scheme = transport.url.partition("://")[0]
        with pytest.raises(ConfigurationError, match=f"names no {transport.bucket_word}"):
            type(transport)(f"{scheme}://")

    def test_a_put_is_one_counted_request(self, behind_proxy: BehindProxy) -> None:
        """put_if_absent sends exactly one request, and counts it and its bytes."""
        transport, proxy = behind_proxy()
        assert transport.put_if_absent("chunk", b"data") is True
        assert len(proxy.requests) == 1
        assert transport.stats.snapshot()["requests"] == {"put": 1}
        assert transport.stats.bytes_sent == 4

    def test_a_taken_key_is_refused_at_once(self, behind_proxy: BehindProxy) -> None:
        """A key that exists means False after one request, the original bytes kept."""
        transport, proxy = behind_proxy()
        assert transport.put_if_absent("chunk", b"first") is True
        proxy.clear()
        assert transport.put_if_absent("chunk", b"second") is False
        assert len(proxy.requests) == 1
        assert transport.get("chunk") == b"first"

    def test_a_probe_is_one_get_and_a_later_write_is_seen(
        self, transport: BucketTransport, behind_proxy: BehindProxy
    ) -> None:
        """Once the bucket is known, a miss costs one GET and is not remembered: the next
        GET finds the new object."""
        reader, proxy = behind_proxy()
        assert transport.put_if_absent("s/00000000000000000000", b"zero")
        assert reader.get("s/00000000000000000000") == b"zero"
        proxy.clear()
        for _ in range(3):
            assert reader.get("s/00000000000000000001") is None
        assert proxy.methods() == ["GET"] * 3
        assert transport.put_if_absent("s/00000000000000000001", b"one")
        assert reader.get("s/00000000000000000001") == b"one"
        assert proxy.methods() == ["GET"] * 4
        assert reader.stats.snapshot()["requests"] == {"get": 5}

    def test_a_fresh_transports_misses_cost_one_get_each(
        self, transport: BucketTransport, behind_proxy: BehindProxy
    ) -> None:
        """From the first request on, a miss is one GET (plus, once, the probe that tells a
        missing bucket from a missing object, where the store needs one)."""
        reader, proxy = behind_proxy()
        probe = self.probe_requests
        for _ in range(3):
            assert reader.get("s/00000000000000000000") is None
        assert proxy.methods() == ["GET"] * (3 + probe)
        assert transport.put_if_absent("s/00000000000000000000", b"zero")
        assert reader.get("s/00000000000000000000") == b"zero"
        assert proxy.methods() == ["GET"] * (4 + probe)
        assert reader.stats.snapshot()["requests"] == {
            "get": 4,
            **({"list": probe} if probe else {}),
        }

    def test_a_limited_read_of_an_empty_object_is_one_request(
        self, behind_proxy: BehindProxy
    ) -> None:
        """A zero-byte object read with a limit (as readers read) is b"" in one request,
        although its range finds no byte 0 (a 416, taken as empty)."""
        transport, proxy = behind_proxy()
        assert transport.put_if_absent("empty", b"")
        assert transport.get("empty") == b""
        proxy.clear()
        assert transport.get("empty", max_size=0) == b""
        assert transport.get("empty", max_size=10) == b""
        assert proxy.methods() == ["GET"] * 2

    def test_max_size_reads_at_most_one_byte_more(
        self, transport: BucketTransport, behind_proxy: BehindProxy
    ) -> None:
        """Over max_size: one GET that carries at most max_size + 1 bytes, and
        ObjectTooLargeError naming the key with the object's true size."""
        data = b"x" * 2_000_000
        assert transport.put_if_absent("big", data)
        reader, proxy = behind_proxy()
        with pytest.raises(ObjectTooLargeError) as info:
            reader.get("big", max_size=1000)
        assert info.value.size == len(data)  # what the store says, not the bytes read
        assert info.value.key == "big"
        assert reader.describe("big") in str(info.value)
        assert proxy.methods() == ["GET"]
        assert proxy.requests[0].bytes_received <= 1001
        assert reader.stats.bytes_received == 0
        assert reader.get("big", max_size=len(data)) == data

    @pytest.mark.parametrize("op", OPERATIONS)
    def test_a_missing_bucket_fails_fast_naming_the_url(
        self, missing_bucket_transport: BucketTransport, op: str
    ) -> None:
        """Every operation on a missing bucket raises PermanentStoreError at once, naming
        the URL and saying that the bucket does not exist."""
        transport = missing_bucket_transport
        with pytest.raises(PermanentStoreError) as info:
            call(transport, op)
        # At once: no retry, and exactly the requests an answer takes.
        probe = self.probe_requests if op in ("get", "delete") else 0
        assert transport.stats.total == 1 + probe
        assert transport.url in str(info.value)
        assert "does not exist" in str(info.value)
        assert info.value.url == transport.url

    @pytest.mark.parametrize("reply", ["store's", "bare"])
    @pytest.mark.parametrize("op", OPERATIONS)
    def test_a_503_is_one_request_and_a_transient_error(
        self, behind_proxy: BehindProxy, op: str, reply: str
    ) -> None:
        """One 503 (as the store words it, or bare) is one request and a
        TransientStoreError naming the URL: no retries inside the SDK, which would wait
        seconds before pipes_bus's own policy saw the failure."""
        answer: Reply = self.busy_reply if reply == "store's" else (503, {}, b"busy")
        transport, proxy = behind_proxy(inject=lambda request: answer)
        with pytest.raises(TransientStoreError) as info:
            call(transport, op)
        assert len(proxy.requests) == 1
        assert transport.stats.total == 1
        assert transport.url in str(info.value)

    @pytest.mark.parametrize("op", OPERATIONS)
    def test_an_unreachable_endpoint_is_transient(
        self, transport_at: Callable[[str], BucketTransport], op: str
    ) -> None:
        """Connection refused is a TransientStoreError (retry later), naming the URL."""
        transport = transport_at(f"http://127.0.0.1:{free_port()}")
        try:
            with pytest.raises(TransientStoreError) as info:
                call(transport, op)
        finally:
            transport.close()
        assert transport.url in str(info.value)

    def test_a_listing_follows_pages(self, transport: BucketTransport) -> None:
        """With small pages, every name comes back once, sorted, after a key too."""
        for n in range(7):
            assert transport.put_if_absent(f"s/{n:03d}", b"1")
            assert transport.put_if_absent(f"s/d{n}/x", b"1")
        transport.page_size = 3
        before = transport.stats.snapshot()["requests"].get("list", 0)
        names = transport.list("s")
        assert transport.stats.snapshot()["requests"]["list"] - before > 1
        folders = [f"d{n}" for n in range(7)]
        assert names == [f"{n:03d}" for n in range(7)] + folders
        assert transport.list("s", after="004") == ["005", "006", *folders]
        assert transport.list("s", after="d3") == ["d4", "d5", "d6"]

    def test_a_walk_follows_pages(self, transport: BucketTransport) -> None:
        """With small pages, a walk yields every object below the prefix once."""
        for n in range(7):
            assert transport.put_if_absent(f"s/{n:03d}", b"12")
            assert transport.put_if_absent(f"s/d{n}/x", b"1")
        transport.page_size = 3
        before = transport.stats.snapshot()["requests"].get("list", 0)
        found = sorted(transport.walk("s"))
        assert transport.stats.snapshot()["requests"]["list"] - before == 5
        assert found == sorted(
            [(f"s/{n:03d}", 2) for n in range(7)] + [(f"s/d{n}/x", 1) for n in range(7)]
        )


class CredentialsConformance:
    """Wrong credentials, for a store whose local server checks them (mix in with
    :class:`BucketConformance`)."""

    #: Words the store's refusal carries that the message must repeat (its error code).
    denied_detail: ClassVar[str] = ""

    @pytest.fixture
    def wrong_credentials_transport(
        self,
    ) -> tuple[BucketTransport, list[str]]:  # pragma: no cover - subclasses override
        """A transport on ``transport``'s location with credentials the server refuses, and
        the strings no message may show (the secrets involved, or pieces of them)."""
        raise NotImplementedError("Define a `wrong_credentials_transport` fixture.")

    @pytest.mark.parametrize("op", OPERATIONS)
    def test_wrong_credentials_fail_fast_naming_the_url(
        self, wrong_credentials_transport: tuple[BucketTransport, list[str]], op: str
    ) -> None:
        """A refused credential is a PermanentStoreError at once, about access, naming the
        URL and showing no secret."""
        transport, secrets = wrong_credentials_transport
        with pytest.raises(PermanentStoreError) as info:
            call(transport, op)
        # At once: no retry, and exactly the requests an answer takes.
        assert transport.stats.total == 1
        message = str(info.value)
        assert transport.url in message
        assert "access was refused" in message
        assert self.denied_detail in message
        for secret in secrets:
            assert secret not in message
