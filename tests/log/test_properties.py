"""Property tests of the whole log: writers and readers in random interleavings, with faults.

Each example drives real ChunkWriters (background threads and all) and SessionReaders over
the memory transport, wrapped in FaultyTransport, and checks exactly-once, in-order delivery
per writer with the exact contents.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from pipes_bus._wire.chunk import parse_header
from pipes_bus._wire.keys import chunk_key, stream_prefix
from pipes_bus.log import ChunkWriter, RetryPolicy, SessionReader, WriterSettings
from pipes_bus.messages import Closed, Custom
from pipes_bus.orchestrator import Event, SessionCursor, StreamFault
from pipes_bus.testing import FaultPlan, FaultyTransport
from pipes_bus.transports._memory import MemoryTransport

SESSION = "s"
DAMAGE_REASONS = {"corrupt", "truncated", "foreign", "newer_protocol"}


def no_sleep(seconds: float) -> None:
    """A sleep that returns at once."""


class StepClock:
    """A reader clock that moves only on "tick" steps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Consumer:
    """A reader's user: consumes events, keeps a saved cursor, and can crash and resume."""

    transport: Any
    clock: StepClock
    saved: bytes = field(default_factory=lambda: SessionCursor(SESSION).dumps())
    got: dict[str, list[tuple[int, Any]]] = field(default_factory=dict)
    faults: list[StreamFault] = field(default_factory=list)
    restarts: int = 0

    def __post_init__(self) -> None:
        self.cursor = SessionCursor.loads(self.saved)
        self.reader = self.open()

    def open(self) -> SessionReader:
        return SessionReader(
            self.transport,
            SESSION,
            cursor=SessionCursor.loads(self.saved),
            discover_interval=1.0,
            scan_interval=2.0,
            clock=self.clock,
        )

    def consume(self, items: list[Event | StreamFault], keep: int | None = None) -> None:
        """Take the first ``keep`` items (all if None), saving the cursor after each."""
        for item in items[:keep]:
            if isinstance(item, StreamFault):
                self.faults.append(item)
                continue
            self.got.setdefault(item.writer, []).append((item.seq, item.message))
            self.cursor.advance(item)
            self.saved = self.cursor.dumps()

    def restart(self) -> None:
        """Lose the reader and everything not yet consumed; resume from the saved cursor."""
        self.restarts += 1
        self.cursor = SessionCursor.loads(self.saved)
        self.reader = self.open()


def stored_ranges(store: MemoryTransport, writer: str) -> list[tuple[int, int]]:
    """(first, count) of each chunk of a stream, checking the chunks are numbered 0..k-1."""
    names = store.list(stream_prefix(SESSION, writer))
    assert names == [f"{n:020d}" for n in range(len(names))]
    out = []
    for name in names:
        data = store.get(f"{stream_prefix(SESSION, writer)}/{name}")
        assert data is not None
        header = parse_header(data)[0]
        out.append((header.first, header.count))
    return out


writer_options = st.fixed_dictionaries(
    {
        "encoding": st.sampled_from(["jsonl", "msgpack"]),
        "compression": st.sampled_from([None, None, "zlib", "gzip"]),
        "chunk_bytes": st.sampled_from([48, 200, 1024, 64 * 1024]),
        "linger": st.sampled_from([0.0, 3600.0]),
    }
)

# Writer indices are taken modulo the number of writers; writes come up most often.
step = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(1, 12), st.integers(0, 40)),
    st.tuples(st.just("write"), st.integers(0, 2), st.integers(1, 3), st.just(0)),
    st.tuples(st.just("flush"), st.integers(0, 2)),
    st.tuples(st.just("poll")),
    st.tuples(st.just("crash"), st.integers(1, 8)),
    st.tuples(st.just("crash"), st.just(0)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 1.0, 3.0])),
)

fault_rates = st.sampled_from([0.0, 0.05, 0.2, 0.35])


@settings(max_examples=300, deadline=None)
@given(
    writers=st.lists(writer_options, min_size=1, max_size=3),
    steps=st.lists(step, min_size=4, max_size=40),
    write_faults=st.tuples(fault_rates, fault_rates, fault_rates),
    read_faults=fault_rates,
    seed=st.integers(0, 2**16),
)
def test_every_message_is_delivered_once_in_order_despite_faults_and_restarts(
    writers: list[dict[str, Any]],
    steps: list[tuple[Any, ...]],
    write_faults: tuple[float, float, float],
    read_faults: float,
    seed: int,
) -> None:
    """Random interleavings of writes, flushes, polls, crashes mid-batch, restarts from the
    saved cursor and clock ticks, over transient errors, timeouts and lost replies: each
    writer's messages arrive exactly once, in order, with their exact contents."""
    store = MemoryTransport(f"memory://prop-{uuid.uuid4().hex}")
    error, lost_reply, timeout = write_faults
    chunk_writers: list[ChunkWriter] = []
    for i, options in enumerate(writers):
        transport = FaultyTransport(
            store,
            FaultPlan(error=error, lost_reply=lost_reply, timeout=timeout, seed=seed + i),
            sleep=no_sleep,
        )
        settings_ = WriterSettings(retry=RetryPolicy(initial=0, maximum=0, attempts=400), **options)
        chunk_writers.append(ChunkWriter(transport, SESSION, f"w{i}", settings_, sleep=no_sleep))
    reading = FaultyTransport(store, FaultPlan(error=read_faults, seed=seed + 99))
    consumer = Consumer(reading, StepClock())
    sent: dict[str, list[Any]] = {f"w{i}": [] for i in range(len(writers))}
    try:
        for op, *args in steps:
            if op == "write":
                index, count, pad = args
                index %= len(chunk_writers)
                name = f"w{index}"
                for _ in range(count):
                    message = Custom(payload={"w": name, "n": len(sent[name]), "pad": "p" * pad})
                    assert chunk_writers[index].write(message) == len(sent[name])
                    sent[name].append(message)
            elif op == "flush":
                index = args[0] % len(chunk_writers)
                chunk_writers[index].flush()
                assert chunk_writers[index].delivered == len(sent[f"w{index}"])
            elif op == "poll":
                consumer.consume(consumer.reader.poll())
            elif op == "crash":
                consumer.consume(consumer.reader.poll(), keep=args[0])
                consumer.restart()
            elif op == "restart":
                consumer.restart()
            elif op == "tick":
                consumer.clock.now += args[0]
        for w in chunk_writers:
            w.close()
        for _ in range(20_000):
            consumer.consume(consumer.reader.poll())
            reader = consumer.reader
            if len(reader.writers) == len(writers) and not reader.open_writers:
                break
            consumer.clock.now += 0.5
        else:
            raise AssertionError("the reader never saw every writer close")
    finally:
        for w in chunk_writers:
            if not w.closed:
                w.close()

    for name, messages in sent.items():
        # On the store itself: chunk numbers 0..k-1 whose ranges tile 0..n exactly, so no
        # retry or lost reply ever published a message twice, even where a reader would hide it.
        tiles = stored_ranges(store, name)
        starts = [sum(count for _, count in tiles[:k]) for k in range(len(tiles))]
        assert [first for first, _ in tiles] == starts
        assert sum(count for _, count in tiles) == len(messages) + 1
    assert consumer.faults == []
    assert set(consumer.got) == set(sent)
    for name, messages in sent.items():
        got = consumer.got[name]
        assert [seq for seq, _ in got] == list(range(len(messages) + 1))
        assert [m for _, m in got[:-1]] == messages
        closed = got[-1][1]
        assert closed == Closed(count=len(messages), time=closed.time)


damage = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
    st.tuples(st.just("cut"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("empty")),
    st.tuples(st.just("foreign")),
    st.tuples(st.just("missing")),
)


@settings(max_examples=150, deadline=None)
@given(
    groups=st.lists(st.integers(1, 6), min_size=2, max_size=10),
    harm=st.dictionaries(st.integers(0, 8), damage, max_size=5),
    encoding=st.sampled_from(["jsonl", "msgpack"]),
)
def test_damage_loses_exactly_the_damaged_chunks(
    groups: list[int], harm: dict[int, tuple[Any, ...]], encoding: str
) -> None:
    """Flipped bits, cut, emptied, replaced or missing chunks are each reported at their key;
    the loss is reported as the exact index range; every other message arrives once, in order."""
    store = MemoryTransport(f"memory://damage-{uuid.uuid4().hex}")
    writer = ChunkWriter(store, SESSION, "w", WriterSettings(encoding=encoding, linger=3600))
    sent = 0
    for size in groups:
        for _ in range(size):
            writer.write(Custom(payload=sent))
            sent += 1
        writer.flush()
    writer.close()
    names = store.list(stream_prefix(SESSION, "w"))
    ranges = []
    for name in names:
        data = store.get(f"{stream_prefix(SESSION, 'w')}/{name}")
        assert data is not None
        header = parse_header(data)[0]
        ranges.append((header.first, header.first + header.count - 1))
    last = len(names) - 1
    harmed = {n: how for n, how in harm.items() if n < last}  # the final chunk stays whole
    for n, how in harmed.items():
        key = chunk_key(SESSION, "w", n)
        data = store.get(key)
        assert data is not None
        store.delete(key)
        if how[0] == "flip":
            at = int(how[1] * len(data))
            data = data[:at] + bytes([data[at] ^ (1 << how[2])]) + data[at + 1 :]
        elif how[0] == "cut":
            data = data[: int(how[1] * len(data))]
        elif how[0] == "empty":
            data = b""
        elif how[0] == "foreign":
            data = msgspec.json.encode({"some": "thing else"})
        if how[0] != "missing":
            assert store.put_if_absent(key, data)

    reader = SessionReader(store, SESSION, discover_interval=0)
    items: list[Event | StreamFault] = []
    for _ in range(4 * len(names)):
        items += reader.poll()
        if reader.writers and not reader.open_writers:
            break
        items += reader.scan()
    assert reader.open_writers == []

    expected_faults: list[tuple[str, str, tuple[int, int] | None]] = []
    lost_from: int | None = None
    for n in range(len(names)):
        key = chunk_key(SESSION, "w", n)
        if n in harmed:
            if harmed[n][0] != "missing":
                expected_faults.append((key, "damaged", None))
            elif n - 1 not in harmed or harmed[n - 1][0] != "missing":
                expected_faults.append((key, "gap", None))
            lost_from = ranges[n][0] if lost_from is None else lost_from
        elif lost_from is not None:
            expected_faults.append((key, "gap", (lost_from, ranges[n][0] - 1)))
            lost_from = None
    got_faults = [
        (f.key, "damaged" if f.reason in DAMAGE_REASONS else f.reason, f.lost)
        for f in items
        if isinstance(f, StreamFault)
    ]
    assert got_faults == expected_faults
    kept = [i for n, (a, b) in enumerate(ranges) if n not in harmed for i in range(a, b + 1)]
    got = [(i.seq, i.message) for i in items if isinstance(i, Event)]
    assert [seq for seq, _ in got] == kept
    assert [m for _, m in got[:-1]] == [Custom(payload=i) for i in kept[:-1]]
    assert isinstance(got[-1][1], Closed)
