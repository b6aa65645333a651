"""SessionReader: discovery, probing, faults, cursors and adaptive following."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from pipes_bus import (
    ConfigurationError,
    PermanentStoreError,
    TransientStoreError,
    UnreadableObjectError,
)
from pipes_bus._log.items import split_custom
from pipes_bus._wire.chunk import build_chunk, checksum
from pipes_bus._wire.keys import chunk_key, stream_prefix
from pipes_bus.log import ChunkWriter, Schedule, SessionReader, WriterSettings
from pipes_bus.messages import Closed, Custom, Log, UnknownMessage
from pipes_bus.orchestrator import Event, SessionCursor, StreamCursor, StreamFault
from pipes_bus.testing import FaultPlan, FaultyTransport
from pipes_bus.transports import Transport
from pipes_bus.transports._memory import MemoryTransport

if TYPE_CHECKING:
    from tests.helpers import FakeClock

SESSION = "s"
Item = Event | StreamFault


def key(n: int, writer: str = "w") -> str:
    """The key of chunk ``n`` of ``writer``."""
    return chunk_key(SESSION, writer, n)


def put_chunk(
    bus: Transport,
    n: int,
    first: int,
    messages: list[Any],
    *,
    writer: str = "w",
    final: bool = False,
    **options: Any,
) -> None:
    """Store chunk ``n`` of ``writer`` holding ``messages`` from index ``first``."""
    body = b"".join(msgspec.json.encode(m) + b"\n" for m in messages)
    data = build_chunk(
        writer=writer, chunk=n, first=first, count=len(messages), body=body, final=final, **options
    )
    assert bus.put_if_absent(key(n, writer), data)


def logs(first: int, count: int) -> list[Log]:
    """Log messages numbered first..first+count-1."""
    return [Log(message=str(i)) for i in range(first, first + count)]


def three_chunks(bus: Transport) -> None:
    """Chunks 0, 1, 2 of writer "w", two messages each (indices 0..5)."""
    for n in range(3):
        put_chunk(bus, n, 2 * n, logs(2 * n, 2))


def reader(bus: Transport, clock: FakeClock, **kwargs: Any) -> SessionReader:
    """A reader that discovers on every poll and never scans unless the clock moves 1000 s."""
    kwargs.setdefault("discover_interval", 0)
    kwargs.setdefault("scan_interval", 1000)
    return SessionReader(bus, SESSION, clock=clock, **kwargs)


def events(items: list[Item]) -> list[tuple[str, int, int, Any]]:
    """(writer, seq, chunk, message) of the events among ``items``."""
    return [(i.writer, i.seq, i.chunk, i.message) for i in items if isinstance(i, Event)]


def faults(items: list[Item]) -> list[tuple[str, str, tuple[int, int] | None]]:
    """(key, reason, lost) of the faults among ``items``."""
    return [(i.key, i.reason, i.lost) for i in items if isinstance(i, StreamFault)]


def seqs(items: list[Item]) -> list[int]:
    """The seq of every event among ``items``."""
    return [i.seq for i in items if isinstance(i, Event)]


class FlakyGets(FaultyTransport):
    """Fails the next ``n`` gets of chosen keys with a transient error."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.failing: dict[str, int] = {}

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        if self.failing.get(key, 0) > 0:
            self.failing[key] -= 1
            raise TransientStoreError(f"flaky get {key}", url=self.url, key=key)
        return self.inner.get(key, max_size=max_size)


def requests(transport: Transport) -> dict[str, int]:
    """A copy of the transport's request counts."""
    return dict(transport.stats.snapshot()["requests"])


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Requests made between two snapshots."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


class TestPolling:
    """poll(): what one pass reads, and what it costs."""

    def test_one_poll_reads_every_available_chunk(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """All chunks already published are returned by a single poll, in order."""
        for n in range(5):
            put_chunk(bus, n, 2 * n, logs(2 * n, 2))
        items = reader(bus, clock).poll()
        assert events(items) == [("w", i, i // 2, Log(message=str(i))) for i in range(10)]

    def test_a_slow_store_returns_events_before_the_writer_stops(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """On a slow store a pass hands over what it has read and stays due for the rest."""

        class SlowGets(FaultyTransport):
            """Every get takes 40 ms of the reader's clock."""

            def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
                clock.advance(0.04)
                return self.inner.get(key, max_size=max_size)

        for n in range(10):
            put_chunk(bus, n, 2 * n, logs(2 * n, 2))
        r = reader(SlowGets(bus), clock)
        first = r.poll(due_only=True)
        assert seqs(first) == [0, 1, 2, 3, 4, 5]
        assert r.behind
        assert r.wait_time() == 0
        rest = []
        while r.behind:
            rest += r.poll(due_only=True)
        assert seqs(first + rest) == list(range(20))

    def test_writers_are_read_independently_in_order(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Each writer's messages arrive in its own order, all of them."""
        put_chunk(bus, 0, 0, logs(0, 3), writer="a")
        put_chunk(bus, 0, 0, logs(10, 2), writer="b")
        put_chunk(bus, 1, 3, logs(3, 1), writer="a", final=False)
        items = reader(bus, clock).poll()
        assert [(w, s, m.message) for w, s, _, m in events(items) if w == "a"] == [
            ("a", 0, "0"),
            ("a", 1, "1"),
            ("a", 2, "2"),
            ("a", 3, "3"),
        ]
        assert [(w, s, m.message) for w, s, _, m in events(items) if w == "b"] == [
            ("b", 0, "10"),
            ("b", 1, "11"),
        ]

    def test_idle_poll_costs_one_get_per_open_stream(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Between discoveries, a poll with nothing new makes exactly one GET per open stream."""
        put_chunk(bus, 0, 0, logs(0, 1), writer="a")
        put_chunk(bus, 0, 0, logs(0, 1), writer="b")
        r = reader(bus, clock, discover_interval=60)
        assert len(r.poll()) == 2
        before = requests(bus)
        assert r.poll() == []
        assert delta(before, requests(bus)) == {"get": 2}

    def test_new_writers_are_found_on_the_discover_interval(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A writer that appears later is listed once discover_interval has passed."""
        put_chunk(bus, 0, 0, logs(0, 1), writer="a")
        r = reader(bus, clock, discover_interval=5)
        assert seqs(r.poll()) == [0]
        put_chunk(bus, 0, 0, logs(0, 1), writer="b")
        clock.advance(4.9)
        assert r.poll() == []
        assert r.writers == ["a"]
        clock.advance(0.1)
        assert events(r.poll()) == [("b", 0, 0, Log(message="0"))]
        assert r.writers == ["a", "b"]

    def test_discover_returns_only_new_writers(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """discover() lists the session and returns writers not seen before."""
        put_chunk(bus, 0, 0, logs(0, 1), writer="a")
        r = reader(bus, clock)
        assert r.discover() == ["a"]
        put_chunk(bus, 0, 0, logs(0, 1), writer="b")
        assert r.discover() == ["b"]
        assert r.discover() == []

    def test_closed_streams_are_no_longer_probed(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Once a stream's final chunk is read it is closed and costs nothing more."""
        put_chunk(bus, 0, 0, [Log(message="a"), Closed(count=1)], final=True)
        r = reader(bus, clock, discover_interval=60)
        items = r.poll()
        assert seqs(items) == [0, 1]
        assert (r.writers, r.open_writers) == (["w"], [])
        last = r.last_event("w")
        assert last is not None
        assert (last.seq, last.message) == (1, Closed(count=1))
        assert r.last_event("nobody") is None
        before = requests(bus)
        assert r.poll() == []
        assert delta(before, requests(bus)) == {}

    def test_bad_stream_names_are_reported_once(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A folder under streams/ that is not a valid writer id is one foreign fault, then ignored."""
        assert bus.put_if_absent(f"{SESSION}/streams/bad name/x", b"?")
        r = reader(bus, clock)
        assert faults(r.poll()) == [(f"{SESSION}/streams/bad name", "foreign", None)]
        assert r.poll() == []
        assert r.writers == []


class ReadAhead(FaultyTransport):
    """A memory store that reads like a remote one: the reader fetches ahead."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self.capabilities = dataclasses.replace(inner.capabilities, read_ahead=True)  # type: ignore[misc]
        self.keys: list[str] = []

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        self.keys.append(key)
        return self.inner.get(key, max_size=max_size)


class TestReadAhead:
    """Where each request waits on a network, the next chunk is fetched during decoding."""

    def test_every_chunk_is_fetched_once_and_delivered_in_order(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Read-ahead changes no event, and fetches each key once, plus one probe past the end."""
        for n in range(6):
            put_chunk(bus, n, 3 * n, logs(3 * n, 3))
        store = ReadAhead(bus)
        r = reader(store, clock, discover_interval=60)
        r.discover()
        items = r.poll()
        assert events(items) == events(reader(bus, clock).poll())
        assert seqs(items) == list(range(18))
        assert store.keys == [key(n) for n in range(7)]

    def test_nothing_is_fetched_past_a_final_chunk(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A stream's last chunk ends its reads: nothing is fetched ahead past it, and the
        next key gets exactly one look, to report anything that follows a final chunk."""
        put_chunk(bus, 0, 0, logs(0, 2))
        put_chunk(bus, 1, 2, logs(2, 2), final=True)
        store = ReadAhead(bus)
        r = reader(store, clock, discover_interval=60)
        r.discover()
        assert seqs(r.poll()) == [0, 1, 2, 3]
        assert store.keys == [key(0), key(1), key(2)]
        assert r.poll() == []
        assert store.keys == [key(0), key(1), key(2)]

    def test_a_pass_cut_short_keeps_its_fetch_for_the_next(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A pass that stops at its limit leaves the fetched chunk for the next pass to use."""
        for n in range(4):
            put_chunk(bus, n, 2 * n, logs(2 * n, 2))
        store = ReadAhead(bus)
        r = reader(store, clock, discover_interval=60)
        r.discover()
        first = r.poll(limit=2)
        assert r.behind
        rest = r.poll(limit=2)
        while r.behind:
            rest += r.poll(limit=2)
        assert seqs(first) == [0, 1]
        assert seqs(first + rest) == list(range(8))
        assert store.keys == [key(n) for n in range(5)]


class TestFaults:
    """Damage is reported as a fault naming the key, and everything else is delivered."""

    @pytest.mark.parametrize(
        ("damage", "reason"),
        [
            (lambda d: d.replace(b'"first":2', b'"first":3'), "corrupt"),
            (lambda d: d[:-3] + bytes([d[-3] ^ 0x01]) + d[-2:], "corrupt"),
            (lambda d: d[:-4], "truncated"),
            (lambda d: d[:30], "truncated"),
            (lambda d: b"", "truncated"),
            (lambda d: b"<html>Access denied</html>", "foreign"),
            (lambda d: d.replace(b'"message":"2"', b'"message":"X"'), "corrupt"),
        ],
        ids=["header-bit", "body-bit", "cut-body", "cut-header", "empty", "foreign", "checksum"],
    )
    def test_damaged_chunk_is_reported_and_the_rest_delivered(
        self, bus: MemoryTransport, clock: FakeClock, damage: Any, reason: str
    ) -> None:
        """The damaged chunk is one fault at its key; the next names the lost range; nothing
        else is lost."""
        three_chunks(bus)
        original = bus.get(key(1))
        assert original is not None
        bus.delete(key(1))
        assert bus.put_if_absent(key(1), damage(original))
        items = reader(bus, clock).poll()
        assert faults(items) == [(key(1), reason, None), (key(2), "gap", (2, 3))]
        assert seqs(items) == [0, 1, 4, 5]
        assert [type(i).__name__ for i in items] == [
            "Event",
            "Event",
            "StreamFault",
            "StreamFault",
            "Event",
            "Event",
        ]

    def test_fault_text_names_reason_and_key(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """str(fault) is "<reason> at <key>: <detail>"."""
        assert bus.put_if_absent(key(0), b"")
        [fault] = reader(bus, clock).poll()
        assert isinstance(fault, StreamFault)
        assert str(fault) == f"truncated at {key(0)}: the object is empty"

    def test_index_gap_is_reported_with_the_exact_lost_range(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A chunk starting past the next expected index yields a gap fault naming the range."""
        put_chunk(bus, 0, 0, logs(0, 2))
        put_chunk(bus, 1, 5, logs(5, 2))
        items = reader(bus, clock).poll()
        assert faults(items) == [(key(1), "gap", (2, 4))]
        [fault] = [i for i in items if isinstance(i, StreamFault)]
        assert fault.detail == "messages 2..4 never arrived (lost before this chunk)"
        assert seqs(items) == [0, 1, 5, 6]

    def test_scan_skips_a_missing_chunk_when_later_ones_exist(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """With chunk 1 missing and 2 present, poll waits at 1; scan() reports the gap and
        delivers the rest."""
        three_chunks(bus)
        bus.delete(key(1))
        r = reader(bus, clock)
        assert seqs(r.poll()) == [0, 1]
        assert r.poll() == []
        items = r.scan()
        assert faults(items) == [(key(1), "gap", None), (key(2), "gap", (2, 3))]
        first_fault = next(i for i in items if isinstance(i, StreamFault))
        assert first_fault.detail == "chunks 1..1 are missing while chunk 2 exists"
        assert seqs(items) == [4, 5]
        assert r.poll() == []

    def test_poll_scans_a_stuck_stream_after_scan_interval(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A stream idle for scan_interval is listed once by poll, which finds the gap."""
        three_chunks(bus)
        bus.delete(key(1))
        r = reader(bus, clock, scan_interval=30, discover_interval=1000)
        assert seqs(r.poll()) == [0, 1]
        clock.advance(29.9)
        before = requests(bus)
        assert r.poll() == []
        assert delta(before, requests(bus)) == {"get": 1}
        clock.advance(0.1)
        items = r.poll()
        assert faults(items) == [(key(1), "gap", None), (key(2), "gap", (2, 3))]
        assert seqs(items) == [4, 5]

    def test_a_chunk_that_cannot_be_read_just_now_is_not_taken_for_missing(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A transient read error while scanning does not make the reader skip an existing chunk."""
        three_chunks(bus)
        flaky = FlakyGets(bus)
        r = reader(flaky, clock)
        flaky.failing[key(1)] = 3
        assert seqs(r.poll()) == [0, 1]
        assert isinstance(r.last_error, TransientStoreError)
        assert r.scan() == []
        assert seqs(r.poll()) == [2, 3, 4, 5]

    def test_strangers_in_a_stream_are_reported_once(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """An object in a stream that is not named like a chunk is one foreign fault."""
        put_chunk(bus, 0, 0, logs(0, 1))
        assert bus.put_if_absent(f"{stream_prefix(SESSION, 'w')}/README.txt", b"hi")
        r = reader(bus, clock)
        assert seqs(r.poll()) == [0]
        items = r.scan()
        assert faults(items) == [(f"{stream_prefix(SESSION, 'w')}/README.txt", "foreign", None)]
        assert r.scan() == []

    def test_newer_major_protocol_chunk_is_a_fault(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A chunk from a newer major protocol is reported; later chunks are still read."""
        put_chunk(bus, 0, 0, logs(0, 2))
        body = b'{"kind":"log","message":"2"}\n{"kind":"log","message":"3"}\n'
        line = msgspec.json.encode(
            {
                "format": "pipes-bus-chunk",
                "protocol": "2.0",
                "writer": "w",
                "chunk": 1,
                "first": 2,
                "count": 2,
                "size": len(body),
                "crc32": 0,
            }
        )
        assert bus.put_if_absent(key(1), line + b"\n" + body)
        put_chunk(bus, 2, 4, logs(4, 2))
        items = reader(bus, clock).poll()
        assert faults(items) == [(key(1), "newer_protocol", None), (key(2), "gap", (2, 3))]
        assert seqs(items) == [0, 1, 4, 5]

    def test_chunk_over_the_size_limit_is_a_fault(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A chunk larger than max_chunk_bytes is not read: a too_large fault, then on."""
        put_chunk(bus, 0, 0, logs(0, 1))
        put_chunk(bus, 1, 1, [Log(message="x" * 5000)])
        put_chunk(bus, 2, 2, logs(2, 1))
        items = reader(bus, clock, max_chunk_bytes=1000).poll()
        assert faults(items) == [(key(1), "too_large", None), (key(2), "gap", (1, 1))]
        [too_large, _] = [i for i in items if isinstance(i, StreamFault)]
        assert "over the 1000-byte limit" in too_large.detail
        assert seqs(items) == [0, 2]

    def test_decompression_is_bounded_by_max_chunk_bytes(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A small compressed chunk that inflates past max_chunk_bytes is refused as corrupt."""
        writer = ChunkWriter(bus, SESSION, "w", WriterSettings(compression="lzma"))
        writer.write(Custom(payload="0" * 1_000_000))
        writer.close()
        stored = bus.get(key(0))
        assert stored is not None
        assert len(stored) < 64 * 1024
        items = reader(bus, clock, max_chunk_bytes=64 * 1024).poll()
        assert faults(items) == [(key(0), "corrupt", None)]
        [fault] = items
        assert isinstance(fault, StreamFault)
        assert fault.detail.endswith("decompressed body is over the 65536-byte limit")
        assert len(reader(bus, clock, max_chunk_bytes=2_000_000).poll()) == 2

    def test_unsigned_chunks_are_refused_by_a_keyed_reader(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A reader with a session key reports unsigned chunks and delivers signed ones."""
        put_chunk(bus, 0, 0, logs(0, 1))
        put_chunk(bus, 1, 1, logs(1, 1), key=b"k")
        items = reader(bus, clock, key=b"k").poll()
        assert faults(items) == [(key(0), "unauthenticated", None), (key(1), "gap", (0, 0))]
        assert seqs(items) == [1]

    def test_newer_minor_messages_reach_the_user_as_unknown(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """From a newer minor writer, a new kind is an UnknownMessage event and a new field is in
        Event.unknown_fields; there is no fault."""
        lines = [
            {"kind": "log", "message": "a", "color": "red"},
            {"kind": "hologram", "depth": 3},
        ]
        body = b"".join(msgspec.json.encode(x) + b"\n" for x in lines)
        line = msgspec.json.encode(
            {
                "format": "pipes-bus-chunk",
                "protocol": "1.9",
                "writer": "w",
                "chunk": 0,
                "first": 0,
                "count": 2,
                "size": len(body),
                "crc32": 0,
            }
        )
        crc = checksum(line, body)
        line = line.replace(b'"crc32":0', b'"crc32":%d' % crc)
        assert bus.put_if_absent(key(0), line + b"\n" + body)
        items = reader(bus, clock).poll()
        assert items == [
            Event("w", 0, 0, Log(message="a"), {"color": "red"}),
            Event("w", 1, 0, UnknownMessage("hologram", lines[1], "unknown kind")),
        ]

    def test_transient_read_errors_delay_but_never_lose_or_repeat(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """With half of all reads failing, repeated polls deliver each message exactly once."""
        for n in range(20):
            put_chunk(bus, n, n, logs(n, 1), final=n == 19)
        faulty = FaultyTransport(bus, FaultPlan(error=0.5, seed=3))
        r = reader(faulty, clock)
        got: list[Item] = []
        for _ in range(500):
            got += r.poll()
            if r.writers and not r.open_writers:
                break
        assert seqs(got) == list(range(20))
        assert faults(got) == []
        assert isinstance(r.last_error, TransientStoreError)
        assert faulty.injected["error"] > 0

    def test_strangers_of_the_same_name_in_two_streams_are_each_reported(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A foreign object is reported once per key: ``b/junk`` after ``a/junk`` too."""
        for writer in ("a", "b"):
            put_chunk(bus, 0, 0, logs(0, 1), writer=writer)
            assert bus.put_if_absent(f"{stream_prefix(SESSION, writer)}/junk", b"x")
        assert bus.put_if_absent(f"{SESSION}/streams/bad name", b"x")
        r = reader(bus, clock)
        first = r.poll() + r.scan()
        assert sorted(k for k, _, _ in faults(first)) == sorted(
            [
                f"{SESSION}/streams/bad name",
                f"{stream_prefix(SESSION, 'a')}/junk",
                f"{stream_prefix(SESSION, 'b')}/junk",
            ]
        )
        assert faults(r.poll() + r.scan()) == []

    def test_one_unreadable_object_is_a_fault_and_every_other_stream_goes_on(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """An object that cannot be read (a folder, a FIFO, access denied) is a fault naming
        its key; its stream reports the messages it lost, and other streams are delivered."""
        put_chunk(bus, 0, 0, logs(0, 2))
        put_chunk(bus, 1, 2, logs(2, 1))
        put_chunk(bus, 0, 0, logs(0, 2), writer="other")

        class OneBadKey(FaultyTransport):
            def get(self, k: str, *, max_size: int | None = None) -> bytes | None:
                if k == key(0):
                    raise UnreadableObjectError(
                        f"{k} is a folder", url=self.url, key=k, reason="foreign"
                    )
                return self.inner.get(k, max_size=max_size)

        items = reader(OneBadKey(bus), clock).poll()
        assert sorted(faults(items)) == [(key(0), "foreign", None), (key(1), "gap", (0, 1))]
        assert sorted((w, q) for w, q, _, _ in events(items)) == [
            ("other", 0),
            ("other", 1),
            ("w", 2),
        ]

    def test_permanent_read_errors_are_raised(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """A permanent store failure (say, access denied) is raised by poll, not hidden."""
        put_chunk(bus, 0, 0, logs(0, 1))
        faulty = FaultyTransport(bus, FaultPlan(permanent=frozenset({"get"})))
        with pytest.raises(PermanentStoreError, match="injected permanent failure: get"):
            reader(faulty, clock).poll()


class TestHostileChunks:
    """Intact chunks whose content breaks the protocol: faults name the key and the
    messages lost, and every other message is delivered."""

    def put_lines(
        self,
        bus: Transport,
        lines: list[bytes],
        *,
        n: int = 0,
        first: int = 0,
        final: bool = False,
        writer: str = "w",
    ) -> None:
        """Store chunk ``n`` whose JSON Lines body is ``lines``, exactly as given."""
        body = b"".join(line + b"\n" for line in lines)
        data = build_chunk(
            writer=writer, chunk=n, first=first, count=len(lines), body=body, final=final
        )
        assert bus.put_if_absent(key(n, writer), data)

    @pytest.mark.parametrize(
        "line",
        [
            b'{"kind":"custom","payload":' + b"[" * 990 + b"]" * 990 + b"}",
            b"{not json at all",
            b'{"kind":"log","message":"\xc3\x28"}',
            b"[1,2,3]",
        ],
        ids=["nested-990", "not-json", "not-utf8", "not-an-object"],
    )
    def test_an_undeliverable_message_is_a_corrupt_fault_with_its_seq(
        self, bus: MemoryTransport, clock: FakeClock, line: bytes
    ) -> None:
        """One bad message among good ones: a corrupt fault at its key, lost=(seq, seq); the
        messages before and after it, in the same poll and later ones, are delivered."""
        self.put_lines(
            bus, [b'{"kind":"log","message":"0"}', line, b'{"kind":"log","message":"2"}']
        )
        self.put_lines(bus, [b'{"kind":"closed","count":3}'], n=1, first=3, final=True)
        put_chunk(bus, 0, 0, logs(0, 1), writer="other")
        items = reader(bus, clock).poll()
        mine = [i for i in items if i.writer == "w"]
        assert [type(i).__name__ for i in mine] == ["Event", "StreamFault", "Event", "Event"]
        fault = mine[1]
        assert isinstance(fault, StreamFault)
        assert (fault.key, fault.reason, fault.lost) == (key(0), "corrupt", (1, 1))
        assert fault.detail.startswith("message 1 is not delivered: ")
        assert seqs(mine) == [0, 2, 3]
        assert seqs([i for i in items if i.writer == "other"]) == [0]

    def test_a_wrong_closed_count_is_a_fault(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """`closed` must count the messages before it; a wrong count is a fault naming it."""
        self.put_lines(
            bus, [b'{"kind":"log","message":"0"}', b'{"kind":"closed","count":7}'], final=True
        )
        items = reader(bus, clock).poll()
        assert seqs(items) == [0, 1]
        [fault] = [i for i in items if isinstance(i, StreamFault)]
        assert (fault.key, fault.reason) == (key(0), "corrupt")
        assert fault.detail == (
            "the stream breaks the protocol: `closed` says 7 messages came before it; "
            "the stream holds 1"
        )

    def test_a_chunk_after_the_final_one_is_a_fault(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Anything at the key after a final chunk is reported, not silently dropped."""
        self.put_lines(bus, [b'{"kind":"closed","count":0}'], final=True)
        self.put_lines(bus, [b'{"kind":"log","message":"late"}'], n=1, first=1)
        items = reader(bus, clock).poll()
        assert seqs(items) == [0]
        assert faults(items) == [(key(1), "corrupt", None)]
        assert "follows the stream's final chunk" in str(items[-1])

    def test_a_session_stream_must_start_with_opened(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """With expect_opened (sessions), a stream whose first message is not `opened` gets a
        fault before its messages, which are still delivered."""
        put_chunk(bus, 0, 0, logs(0, 2))
        items = reader(bus, clock, expect_opened=True).poll()
        assert [type(i).__name__ for i in items] == ["StreamFault", "Event", "Event"]
        assert faults(items) == [(key(0), "corrupt", None)]
        assert str(items[0]).endswith("its first message is not `opened`")
        assert faults(reader(bus, clock).poll()) == []


class TestSplitCustom:
    """split_custom(): the bulk split every follower makes of a poll's items."""

    @pytest.mark.parametrize("with_fault", [False, True])
    def test_custom_events_and_the_rest_keep_their_order(self, with_fault: bool) -> None:
        """Custom-message events on one side, everything else on the other, both in order."""
        fault = StreamFault("w", key(3), "gap", "lost", (9, 9))
        batch: list[Item] = [
            Event("w", 0, 0, Custom(time=1.0, payload=0)),
            Event("w", 1, 0, Log(message="a")),
            Event("w", 2, 0, Custom(time=1.0, payload=2)),
            *([fault] if with_fault else []),
            Event("v", 0, 0, UnknownMessage("future", {})),
            Event("v", 1, 0, Custom(time=1.0, payload=4)),
        ]
        customs, others = split_custom(batch)
        assert [e.message.payload for e in customs] == [0, 2, 4]  # type: ignore[union-attr]
        assert others == [batch[1], *([fault] if with_fault else []), batch[-2]]
        assert split_custom(customs) == (customs, [])  # type: ignore[arg-type]


class TestCursor:
    """Saving and resuming: no duplicates, no loss."""

    def test_cursor_round_trips_through_dumps_and_loads(self) -> None:
        """dumps() is plain JSON and loads() gives back an equal cursor."""
        cursor = SessionCursor("s", {"w": StreamCursor(chunk=1, seq=4)})
        data = cursor.dumps()
        assert data == b'{"session":"s","streams":{"w":{"chunk":1,"seq":4,"closed":false}}}'
        assert SessionCursor.loads(data) == cursor
        assert SessionCursor.loads(data.decode()) == cursor

    def test_advance_marks_an_event_consumed(self) -> None:
        """advance() moves a stream's cursor just past the event, and notes a Closed."""
        cursor = SessionCursor("s")
        cursor.advance(Event("w", 4, 2, Log(message="x")))
        assert cursor.streams == {"w": StreamCursor(chunk=2, seq=5, closed=False)}
        cursor.advance(Event("w", 5, 3, Closed(count=5)))
        assert cursor.streams == {"w": StreamCursor(chunk=3, seq=6, closed=True)}

    def test_new_cursors_do_not_share_state(self) -> None:
        """Each cursor has its own streams mapping."""
        first, second = SessionCursor("s"), SessionCursor("s")
        first.advance(Event("w", 0, 0, Log(message="x")))
        assert second.streams == {}

    def test_resume_from_the_readers_cursor(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """A new reader from reader.cursor() continues exactly where the old one stopped."""
        put_chunk(bus, 0, 0, logs(0, 2))
        r = reader(bus, clock)
        assert seqs(r.poll()) == [0, 1]
        saved = r.cursor().dumps()
        assert SessionCursor.loads(saved).streams == {"w": StreamCursor(chunk=1, seq=2)}
        put_chunk(bus, 1, 2, logs(2, 2))
        resumed = reader(bus, clock, cursor=SessionCursor.loads(saved))
        assert events(resumed.poll()) == [
            ("w", 2, 1, Log(message="2")),
            ("w", 3, 1, Log(message="3")),
        ]

    def test_resume_mid_chunk(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """After consuming part of a chunk, a resumed reader delivers exactly the rest of it."""
        put_chunk(bus, 0, 0, logs(0, 5))
        put_chunk(bus, 1, 5, logs(5, 2))
        cursor = SessionCursor(SESSION)
        for item in reader(bus, clock).poll()[:3]:
            assert isinstance(item, Event)
            cursor.advance(item)
        resumed = reader(bus, clock, cursor=SessionCursor.loads(cursor.dumps()))
        assert seqs(resumed.poll()) == [3, 4, 5, 6]

    def test_resume_at_the_end_of_a_chunk_repeats_nothing(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A cursor advanced past a chunk's last message re-reads that chunk but yields none of it."""
        put_chunk(bus, 0, 0, logs(0, 2))
        cursor = SessionCursor(SESSION)
        for item in reader(bus, clock).poll():
            assert isinstance(item, Event)
            cursor.advance(item)
        resumed = reader(bus, clock, cursor=cursor)
        assert resumed.poll() == []
        put_chunk(bus, 1, 2, logs(2, 1))
        assert seqs(resumed.poll()) == [2]

    def test_closed_streams_in_a_cursor_are_not_read(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """A stream the cursor marks closed is neither probed nor reported open."""
        put_chunk(bus, 0, 0, [Closed(count=0)], final=True)
        cursor = SessionCursor(SESSION, {"w": StreamCursor(chunk=0, seq=1, closed=True)})
        r = reader(bus, clock, cursor=cursor, discover_interval=60)
        before = requests(bus)
        assert r.poll() == []
        assert delta(before, requests(bus)) == {"list": 1}  # the first poll discovers; no GET
        assert (r.writers, r.open_writers) == (["w"], [])

    def test_cursor_of_another_session_is_refused(self, bus: MemoryTransport) -> None:
        """A cursor saved for another session raises ConfigurationError."""
        with pytest.raises(ConfigurationError, match=r"The cursor is for session 'x', not 's'\."):
            SessionReader(bus, SESSION, cursor=SessionCursor("x"))


class TestFollow:
    """follow(): adaptive polling until the work is done."""

    def test_stops_when_every_writer_has_closed(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """With no ``until``, follow ends once every discovered writer's Closed is read."""
        for name in ("a", "b"):
            writer = ChunkWriter(bus, SESSION, name)
            writer.write(Log(message=name))
            writer.close()
        items = list(reader(bus, clock).follow(sleep=lambda s: None))
        assert sorted((e[0], e[1]) for e in events(items)) == [
            ("a", 0),
            ("a", 1),
            ("b", 0),
            ("b", 1),
        ]

    def test_backs_off_when_idle_and_speeds_up_when_data_flows(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Sleeps start at the minimum after progress and grow by the factor up to the maximum."""
        writer = ChunkWriter(bus, SESSION, "w", WriterSettings(linger=3600))
        writer.write(Log(message="0"))
        writer.flush()
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(round(seconds, 6))
            clock.advance(seconds)
            if len(sleeps) == 3:
                writer.write(Log(message="1"))
                writer.flush()
            if len(sleeps) == 7:
                writer.close()

        schedule = Schedule(minimum=0.01, maximum=0.04, factor=2.0)
        r = reader(bus, clock, discover_interval=0.04, idle_rate=1000)
        items = list(r.follow(schedule=schedule, sleep=sleep))
        assert seqs(items) == [0, 1, 2]
        # The stream's own schedule: minimum after progress, doubling while idle (listings,
        # on their own backoff, may make a wait shorter, never longer than the maximum).
        assert sleeps[:4] == [0.01, 0.02, 0.04, 0.01]
        assert max(sleeps) == 0.04 and min(sleeps) >= 0.01

    def test_an_idle_session_costs_at_most_idle_rate_requests_per_second(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Twenty idle writers, followed for ten minutes: at most idle_rate requests a second."""
        writers = [ChunkWriter(bus, SESSION, f"w{i}") for i in range(20)]
        for w in writers:
            w.write(Log(message="hi"))
            w.flush()
        minutes = 10

        def until() -> bool:
            return clock() >= 1000.0 + 60 * minutes

        def sleep(seconds: float) -> None:
            clock.advance(max(seconds, 1e-6))

        r = SessionReader(bus, SESSION, clock=clock, idle_rate=1.0)
        items = list(r.follow(until=until, sleep=sleep))
        assert len(items) == 20
        before = requests(bus)
        clock_start = clock()
        items = list(r.follow(until=lambda: clock() >= clock_start + 60 * minutes, sleep=sleep))
        assert items == []
        spent = sum(delta(before, requests(bus)).values())
        # One final forced pass (a listing plus one probe per writer) comes on top.
        assert spent <= 60 * minutes * 1.0 + 21
        for w in writers:
            w.close()

    def test_until_stops_after_a_final_pass(self, bus: MemoryTransport, clock: FakeClock) -> None:
        """When until() turns true, one more full pass picks up what arrived meanwhile."""
        writer = ChunkWriter(bus, SESSION, "w", WriterSettings(linger=3600))
        writer.write(Log(message="0"))
        writer.flush()
        state = {"polls": 0}

        def until() -> bool:
            state["polls"] += 1
            if state["polls"] == 2:
                writer.write(Log(message="late"))
                writer.flush()
                return True
            return False

        items = list(reader(bus, clock).follow(until=until, sleep=lambda s: None))
        assert [(i.seq, i.message) for i in items if isinstance(i, Event)] == [
            (0, Log(message="0")),
            (1, Log(message="late")),
        ]
        writer.close()

    def test_final_pass_reads_everything_even_past_the_poll_limit(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """The last pass after until() turns true delivers all that is there, however much."""
        size = 70_000
        body = b'{"kind":"custom"}\n' * size
        for n in range(3):
            data = build_chunk(writer="w", chunk=n, first=n * size, count=size, body=body)
            assert bus.put_if_absent(key(n), data)
        items = list(reader(bus, clock).follow(until=lambda: True, sleep=lambda s: None))
        assert len(items) == 3 * size
        assert seqs(items) == list(range(3 * size))

    def test_idle_probes_are_spread_so_every_minute_stays_under_budget(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """64 idle writers: after backing off, no 60-second window exceeds idle_rate."""
        writers = [ChunkWriter(bus, SESSION, f"w{i}") for i in range(64)]
        for w in writers:
            w.write(Log(message="x"))
            w.flush()
        r = SessionReader(bus, SESSION, clock=clock, idle_rate=1.0)
        start = clock()
        totals: dict[int, int] = {}
        while clock() < start + 1200:
            r.poll(due_only=True)
            minute = int((clock() - start) // 60)
            totals.setdefault(minute, bus.stats.total)
            clock.advance(max(r.wait_time(), 1e-6))
        counts = [totals[m + 1] - totals[m] for m in range(5, 19)]
        assert max(counts) <= 60, counts
        for w in writers:
            w.close()

    def test_default_schedule_starts_at_the_transports_poll(
        self, bus: MemoryTransport, clock: FakeClock
    ) -> None:
        """Without a schedule, the fastest poll is the transport's (1 ms for memory://)."""
        put_chunk(bus, 0, 0, logs(0, 1))
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(round(seconds, 6))
            clock.advance(seconds)
            if len(sleeps) == 2:
                put_chunk(bus, 1, 1, [Closed(count=1)], final=True)

        list(reader(bus, clock, discover_interval=60).follow(sleep=sleep))
        assert sleeps[:2] == [0.001, 0.0015]


class TestPollSchedule:
    """Schedule: the adaptive wait between polls."""

    def test_grows_by_factor_up_to_maximum_and_resets_on_progress(self) -> None:
        """Idle polls multiply the wait up to the cap; a productive poll drops it to the minimum."""
        schedule = Schedule(minimum=0.1, maximum=0.5, factor=2.0)
        waits = [schedule.next(False) for _ in range(4)]
        assert waits == [0.2, 0.4, 0.5, 0.5]
        assert schedule.next(True) == 0.1
        assert schedule.next(False) == 0.2
