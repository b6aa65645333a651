"""ChunkWriter: batching, bounded memory, call-site errors, retries and delivery failures."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import re
import threading
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from pipes_bus import (
    BufferFullError,
    ConfigurationError,
    DeliveryError,
    EncodeError,
    MessageTooLargeError,
    PermanentStoreError,
    TransientStoreError,
    WriterClosedError,
)
from pipes_bus._wire.chunk import ChunkProblem, parse_header
from pipes_bus._wire.keys import chunk_key, stream_prefix
from pipes_bus._wire.limits import MAX_NESTING, MiB
from pipes_bus.log import ChunkWriter, RetryPolicy, SessionReader, WriterSettings
from pipes_bus.messages import Closed, Custom, ExceptionInfo, Log
from pipes_bus.orchestrator import Event, StreamFault
from pipes_bus.transports import Transport
from pipes_bus.transports._memory import MemoryTransport

if TYPE_CHECKING:
    from tests.helpers import FakeClock, WaitUntil

SESSION = "s"
NO_LINGER = 3600.0  # seals only on size, flush and close


def payload_of_size(size: int, encoding: str = "jsonl") -> Custom:
    """A Custom message whose encoded form (newline included for JSON Lines) is ``size`` bytes."""
    for n in range(size):
        message = Custom(payload="x" * n)
        if len(encoded(message, encoding)) == size:
            return message
    raise AssertionError(f"no Custom message encodes to {size} bytes")


def encoded(message: Any, encoding: str = "jsonl") -> bytes:
    """A message as the writer buffers it."""
    if encoding == "jsonl":
        return msgspec.json.encode(message) + b"\n"
    return msgspec.msgpack.encode(message)


def stored_chunks(bus: Transport, writer: str = "w") -> list[tuple[int, int, int, bool]]:
    """(chunk number, first, count, final) of every chunk in a writer's stream; strangers
    in the stream are left out."""
    out = []
    for name in bus.list(stream_prefix(SESSION, writer)):
        data = bus.get(f"{stream_prefix(SESSION, writer)}/{name}")
        assert data is not None
        try:
            header = parse_header(data)[0]
        except ChunkProblem:
            continue
        out.append((int(name), header.first, header.count, header.final))
    return out


def read_all(bus: Transport) -> list[Event | StreamFault]:
    """Everything a fresh reader finds in the session in one pass."""
    return SessionReader(bus, SESSION, discover_interval=0).poll()


def messages(items: list[Event | StreamFault]) -> list[tuple[int, Any]]:
    """(seq, message) of every event; fails on any fault."""
    out = []
    for item in items:
        assert isinstance(item, Event), item
        out.append((item.seq, item.message))
    return out


class GatedTransport(Transport):
    """Passes every call through, but holds puts while the gate is shut."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.waiting.set()
        assert self.gate.wait(30)
        self.waiting.clear()
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        return self.inner.get(key, max_size=max_size)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        return self.inner.list(prefix, after=after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


class ScriptedTransport(GatedTransport):
    """Puts follow a script: "ok", "error" (transient, store untouched), "lost" (stored,
    then the answer is lost), "permanent". After the script runs out, every put is "ok"."""

    def __init__(self, inner: Transport, script: list[str]) -> None:
        super().__init__(inner)
        self.script = list(script)
        self.puts: list[str] = []

    def put_if_absent(self, key: str, data: bytes) -> bool:
        action = self.script.pop(0) if self.script else "ok"
        self.puts.append(action)
        if action == "error":
            raise TransientStoreError(f"scripted 503 on {key}", url=self.url, key=key)
        if action == "permanent":
            raise PermanentStoreError(f"scripted 403 on {key}", url=self.url, key=key)
        created = self.inner.put_if_absent(key, data)
        if action == "lost":
            raise TransientStoreError(f"scripted lost reply on {key}", url=self.url, key=key)
        return created


def nested(depth: int) -> Any:
    """A value of ``depth`` nested lists."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def no_sleep(seconds: float) -> None:
    """A sleep that returns at once."""


def make_writer(
    transport: Transport, clock: FakeClock | None = None, writer: str = "w", **settings: Any
) -> ChunkWriter:
    """A writer on ``transport`` that seals only on size, flush and close unless told otherwise."""
    settings.setdefault("linger", NO_LINGER)
    settings.setdefault("retry", RetryPolicy(initial=0.001, maximum=0.002, attempts=5))
    kwargs: dict[str, Any] = {"sleep": no_sleep}
    if clock is not None:
        kwargs["clock"] = clock
    return ChunkWriter(transport, SESSION, writer, WriterSettings(**settings), **kwargs)


class TestWriterSettings:
    """WriterSettings validates itself."""

    @pytest.mark.parametrize(
        ("options", "text"),
        [
            ({"encoding": "xml"}, "encoding must be 'jsonl' or 'msgpack', not 'xml'."),
            ({"compression": "zstd"}, "compression must be one of gzip, zlib, bz2, lzma or None"),
            ({"on_full": "drop"}, "on_full must be 'block' or 'raise', not 'drop'."),
            ({"chunk_bytes": 0}, "Need 0 < chunk_bytes <= max_buffer_bytes."),
            (
                {"chunk_bytes": 10, "max_buffer_bytes": 9},
                "Need 0 < chunk_bytes <= max_buffer_bytes.",
            ),
        ],
    )
    def test_bad_settings_raise_configuration_error(
        self, options: dict[str, Any], text: str
    ) -> None:
        """Each unusable option raises ConfigurationError saying what is allowed."""
        with pytest.raises(ConfigurationError) as info:
            WriterSettings(**options)
        assert str(info.value).startswith(text)

    def test_bad_ids_are_refused(self, bus: MemoryTransport) -> None:
        """A session or writer id that is not a single safe path segment is refused."""
        with pytest.raises(ConfigurationError, match=r"writer id '\.\./x' is not a valid id"):
            ChunkWriter(bus, SESSION, "../x")
        with pytest.raises(ConfigurationError, match="session id 'a/b' is not a valid id"):
            ChunkWriter(bus, "a/b", "w")


class TestFlushing:
    """When the writer seals and publishes chunks."""

    def test_flushes_on_size(self, bus: MemoryTransport, wait_until: WaitUntil) -> None:
        """A chunk is sealed once its body reaches chunk_bytes; the rest waits."""
        writer = make_writer(bus, chunk_bytes=100)
        for _ in range(7):
            writer.write(payload_of_size(40))
        wait_until(lambda: writer.delivered == 6)
        assert stored_chunks(bus) == [(0, 0, 3, False), (1, 3, 3, False)]
        writer.flush()
        assert stored_chunks(bus) == [(0, 0, 3, False), (1, 3, 3, False), (2, 6, 1, False)]
        writer.close()

    def test_one_message_over_chunk_size_is_sealed_at_once(
        self, bus: MemoryTransport, wait_until: WaitUntil
    ) -> None:
        """A single message as large as chunk_bytes is published without waiting for linger."""
        writer = make_writer(bus, chunk_bytes=100)
        writer.write(payload_of_size(150))
        wait_until(lambda: writer.delivered == 1)
        assert stored_chunks(bus) == [(0, 0, 1, False)]
        writer.close()

    def test_flushes_on_linger_by_the_injected_clock(
        self, bus: MemoryTransport, clock: FakeClock, wait_until: WaitUntil
    ) -> None:
        """A partial chunk is published once its first message is ``linger`` old on the clock."""
        writer = make_writer(bus, clock, linger=0.05)
        writer.write(Log(message="a"))
        writer.write(Log(message="b"))
        seen = clock.calls
        wait_until(lambda: clock.calls >= seen + 2)  # the flusher looked, and judged it young
        assert writer.delivered == 0
        assert stored_chunks(bus) == []
        clock.advance(0.051)
        wait_until(lambda: writer.delivered == 2)
        assert stored_chunks(bus) == [(0, 0, 2, False)]
        writer.close()

    def test_linger_defaults_to_the_transports(
        self, bus: MemoryTransport, clock: FakeClock, wait_until: WaitUntil
    ) -> None:
        """With linger=None the transport's linger applies: a chunk seals once its first
        message is that old on the writer's clock, not before."""

        class SevenSeconds(MemoryTransport):
            capabilities = dataclasses.replace(MemoryTransport.capabilities, linger=7.0)

        writer = ChunkWriter(
            SevenSeconds(bus.url), SESSION, "w", WriterSettings(linger=None), clock=clock
        )
        writer.write(Log(message="a"))
        seen = clock.calls
        wait_until(lambda: clock.calls >= seen + 1)  # the flusher looked, and judged it young
        clock.advance(6.99)
        seen = clock.calls
        with writer._cond:
            writer._cond.notify_all()  # make it look again now
        wait_until(lambda: clock.calls >= seen + 1)
        assert writer.delivered == 0
        clock.advance(0.02)
        with writer._cond:
            writer._cond.notify_all()
        wait_until(lambda: writer.delivered == 1)
        assert stored_chunks(bus) == [(0, 0, 1, False)]
        writer.close()

    def test_flush_publishes_everything_before_returning(self, bus: MemoryTransport) -> None:
        """flush() returns only when every message written so far is on the store."""
        writer = make_writer(bus)
        for n in range(3):
            assert writer.write(Custom(payload=n)) == n
        writer.flush()
        assert (writer.written, writer.delivered) == (3, 3)
        assert messages(read_all(bus)) == [(n, Custom(payload=n)) for n in range(3)]
        writer.close()

    def test_flush_with_nothing_written_publishes_nothing(self, bus: MemoryTransport) -> None:
        """flush() on an empty writer returns and creates no object."""
        writer = make_writer(bus)
        writer.flush()
        assert stored_chunks(bus) == []
        writer.close()

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    @pytest.mark.parametrize("compression", [None, "gzip", "zlib", "bz2", "lzma"])
    def test_every_encoding_and_compression_arrives(
        self, bus: MemoryTransport, encoding: str, compression: str | None
    ) -> None:
        """Messages written with any encoding and compression arrive exactly as written."""
        writer = make_writer(bus, encoding=encoding, compression=compression, chunk_bytes=200)
        sent = [Log(message=f"m{n}", fields={"n": n}) for n in range(20)]
        for message in sent:
            writer.write(message)
        writer.close()
        got = messages(read_all(bus))
        assert got[:-1] == list(enumerate(sent))
        assert got[-1] == (20, Closed(count=20, time=got[-1][1].time))


class TestSlowStore:
    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_chunks_queued_behind_a_slow_store_are_published_as_one(
        self, bus: MemoryTransport, encoding: str
    ) -> None:
        """Seals that queue while a put is slow go out merged: fewer chunks, same messages."""
        release = threading.Semaphore(0)
        waiting = threading.Semaphore(0)

        class Slow(MemoryTransport):
            def put_if_absent(self, key: str, data: bytes) -> bool:
                waiting.release()
                assert release.acquire(timeout=10)
                return super().put_if_absent(key, data)

        def seal() -> None:
            with writer._cond:
                writer._seal(final=False)  # a separate seal, as a linger would make
                writer._cond.notify_all()

        writer = ChunkWriter(
            Slow(bus.url), SESSION, "w", WriterSettings(linger=3600, encoding=encoding)
        )
        writer.write(Custom(payload=0))
        seal()
        assert waiting.acquire(timeout=10)  # chunk 0 is on its way: the store is slow
        for i in range(1, 5):
            writer.write(Custom(payload=i))
            seal()  # four seals queue up behind it
        release.release()
        assert waiting.acquire(timeout=10)  # ...and go out as one chunk
        closing = threading.Thread(target=writer.close)
        closing.start()
        release.release()
        assert waiting.acquire(timeout=10)
        release.release()
        closing.join(10)
        assert stored_chunks(bus) == [(0, 0, 1, False), (1, 1, 4, False), (2, 5, 1, True)]
        assert messages(read_all(bus))[:5] == [(i, Custom(payload=i)) for i in range(5)]
        assert len(read_all(bus)) == 6


class TestBoundedBuffer:
    """Memory stays bounded when the store is slow."""

    def test_raises_buffer_full_when_configured_to(self, bus: MemoryTransport) -> None:
        """With on_full="raise", the write that finds the buffer full raises; others are kept."""
        gated = GatedTransport(bus)
        gated.gate.clear()
        writer = make_writer(gated, chunk_bytes=100, max_buffer_bytes=200, on_full="raise")
        message = payload_of_size(40)
        for n in range(5):
            assert writer.write(message) == n
        with pytest.raises(BufferFullError, match="holds 200 unpublished bytes"):
            writer.write(message)
        gated.gate.set()
        writer.flush()
        assert writer.write(message) == 5
        writer.close()
        assert [seq for seq, _ in messages(read_all(bus))] == list(range(7))

    def test_blocks_until_there_is_room(self, bus: MemoryTransport, wait_until: WaitUntil) -> None:
        """With on_full="block", a write waits for the store, then goes through in order."""
        gated = GatedTransport(bus)
        gated.gate.clear()
        writer = make_writer(gated, chunk_bytes=100, max_buffer_bytes=200)
        message = payload_of_size(40)
        for _ in range(5):
            writer.write(message)
        result: list[int] = []
        blocked = threading.Thread(target=lambda: result.append(writer.write(message)))
        blocked.start()
        wait_until(lambda: len(writer._cond._waiters) == 1)  # type: ignore[attr-defined]
        assert result == []
        assert writer.written == 5
        gated.gate.set()
        blocked.join(10)
        assert result == [5]
        writer.close()
        assert [seq for seq, _ in messages(read_all(bus))] == list(range(7))

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_published_chunks_free_exactly_what_they_held(
        self, bus: MemoryTransport, encoding: str
    ) -> None:
        """After many published chunks the bound is the same as for a fresh writer."""
        gated = GatedTransport(bus)
        writer = make_writer(
            gated, encoding=encoding, chunk_bytes=400, max_buffer_bytes=400, on_full="raise"
        )
        message = payload_of_size(40, encoding)
        for _ in range(100):
            writer.write(message)
            writer.flush()
        gated.gate.clear()
        accepted = 0
        with pytest.raises(BufferFullError):
            while True:
                writer.write(message)
                accepted += 1
        assert accepted == math.ceil(400 / 40)
        gated.gate.set()
        writer.close()

    def test_a_write_blocked_by_a_full_buffer_fails_if_the_writer_closes(
        self, bus: MemoryTransport, wait_until: WaitUntil
    ) -> None:
        """A write still waiting for room when close() runs raises WriterClosedError; the
        stream still ends with ``closed``, and nothing follows it."""
        gated = GatedTransport(bus)
        gated.gate.clear()
        writer = make_writer(gated, chunk_bytes=100, max_buffer_bytes=200)
        message = payload_of_size(40)
        for _ in range(5):
            writer.write(message)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                writer.write(message)
            except BaseException as exc:
                errors.append(exc)

        blocked = threading.Thread(target=write)
        blocked.start()
        wait_until(lambda: len(writer._cond._waiters) == 1)  # type: ignore[attr-defined]
        closer = threading.Thread(target=writer.close)
        closer.start()
        wait_until(lambda: writer._closing)  # type: ignore[attr-defined]
        gated.gate.set()
        closer.join(10)
        blocked.join(10)
        assert [type(e) for e in errors] == [WriterClosedError]
        got = messages(read_all(bus))
        assert [seq for seq, _ in got] == list(range(6))
        assert got[-1][1] == Closed(count=5, time=got[-1][1].time)
        assert stored_chunks(gated)[-1][3] is True


class TestCallSiteErrors:
    """Bad messages fail where they are written, and nothing else is affected."""

    @pytest.mark.parametrize(
        "payload",
        [object(), {"ok": [1, 2, {"deep": object()}]}, "lone \udcff surrogate", 1 + 2j],
        ids=["object", "nested", "surrogate", "complex"],
    )
    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_unencodable_payload_raises_and_leaves_others_intact(
        self, bus: MemoryTransport, payload: Any, encoding: str
    ) -> None:
        """EncodeError at the call site; messages before and after arrive with no gap."""
        writer = make_writer(bus, encoding=encoding)
        assert writer.write(Custom(payload="before")) == 0
        with pytest.raises(
            EncodeError, match=r"Cannot encode Custom message: .* Nothing was written"
        ):
            writer.write(Custom(payload=payload))
        assert writer.write(Custom(payload="after")) == 1
        writer.close()
        got = messages(read_all(bus))
        assert got[:2] == [(0, Custom(payload="before")), (1, Custom(payload="after"))]
        assert got[2][1] == Closed(count=2, time=got[2][1].time)

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    @pytest.mark.parametrize(
        "failure",
        [KeyError("tz"), RecursionError("deep"), ZeroDivisionError()],
        ids=["keyerror", "recursion", "any"],
    )
    def test_a_failed_encode_leaves_nothing_in_the_buffer(
        self, bus: MemoryTransport, encoding: str, failure: Exception
    ) -> None:
        """Whatever an encode raises midway (a tzinfo whose utcoffset raises KeyError,
        say), nothing of that message stays: the next message is not glued onto it."""

        class Raising(datetime.tzinfo):
            def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
                raise failure

        writer = make_writer(bus, encoding=encoding)
        writer.write(Custom(payload="before"))
        when = datetime.datetime(2024, 1, 1, tzinfo=Raising())
        with pytest.raises(EncodeError, match=r"Cannot encode Custom message: .*Nothing was"):
            writer.write(Custom(payload={"a": "x" * 100, "when": when}))
        writer.write(Custom(payload="after"))
        writer.close()
        got = messages(read_all(bus))
        assert [m for _, m in got[:2]] == [Custom(payload="before"), Custom(payload="after")]
        assert [seq for seq, _ in got] == [0, 1, 2]
        assert isinstance(got[2][1], Closed)

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_nesting_over_the_shared_limit_is_refused_at_the_call_site(
        self, bus: MemoryTransport, encoding: str
    ) -> None:
        """A payload nested deeper than MAX_NESTING raises EncodeError; the deepest allowed
        one (the message itself is a level) is kept, and readers deliver it."""
        writer = make_writer(bus, encoding=encoding)
        with pytest.raises(EncodeError, match=f"nested deeper than {MAX_NESTING} levels"):
            writer.write(Custom(payload=nested(MAX_NESTING)))
        with pytest.raises(EncodeError, match="nested deeper than"):
            writer.write(Custom(payload=nested(990)))
        writer.write(Custom(payload=nested(MAX_NESTING - 1)))
        writer.close()
        got = messages(read_all(bus))
        assert [m for _, m in got[:1]] == [Custom(payload=nested(MAX_NESTING - 1))]
        assert [seq for seq, _ in got] == [0, 1]

    def test_encode_error_is_a_type_error(self) -> None:
        """EncodeError can be caught as TypeError, as a plain encoder's error would be."""
        assert issubclass(EncodeError, TypeError)

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_message_over_the_limit_raises_too_large(
        self, bus: MemoryTransport, encoding: str
    ) -> None:
        """A message over max_message_bytes raises MessageTooLargeError; one at it is kept."""
        writer = make_writer(bus, encoding=encoding, max_message_bytes=100)
        with pytest.raises(MessageTooLargeError) as info:
            writer.write(payload_of_size(101, encoding))
        assert "encodes to 101 bytes, over the 100-byte limit" in str(info.value)
        assert isinstance(info.value, EncodeError)
        assert writer.write(payload_of_size(100, encoding)) == 0
        writer.close()
        assert [seq for seq, _ in messages(read_all(bus))] == [0, 1]


class TestRetries:
    """Transient store errors are retried; ambiguous successes are not duplicated."""

    def test_transient_errors_are_retried_with_the_injected_sleep(
        self, bus: MemoryTransport
    ) -> None:
        """Two 503s then success: three attempts, two backoff sleeps within the policy bounds."""
        scripted = ScriptedTransport(bus, ["error", "error"])
        sleeps: list[float] = []
        writer = ChunkWriter(
            scripted,
            SESSION,
            "w",
            WriterSettings(linger=NO_LINGER, retry=RetryPolicy(initial=0.01, maximum=0.02)),
            sleep=sleeps.append,
        )
        writer.write(Log(message="x"))
        writer.flush()
        assert scripted.puts == ["error", "error", "ok"]
        assert len(sleeps) == 2
        assert all(0 <= s <= 0.02 for s in sleeps)
        writer.close()
        assert stored_chunks(bus) == [(0, 0, 1, False), (1, 1, 1, True)]

    def test_lost_reply_does_not_duplicate(self, bus: MemoryTransport) -> None:
        """A put that landed but whose answer was lost is recognised; one chunk, no duplicate."""
        scripted = ScriptedTransport(bus, ["lost", "lost"])
        writer = make_writer(scripted)
        writer.write(Log(message="x"))
        writer.flush()
        assert scripted.puts == ["lost", "lost", "ok"]
        assert stored_chunks(bus) == [(0, 0, 1, False)]
        assert writer.chunks_published == 1
        writer.close()
        assert [seq for seq, _ in messages(read_all(bus))] == [0, 1]

    def test_random_transient_faults_lose_and_duplicate_nothing(self, bus: MemoryTransport) -> None:
        """Under FaultyTransport's errors, timeouts and lost replies every message arrives once."""
        from pipes_bus.testing import FaultPlan, FaultyTransport

        faulty = FaultyTransport(
            bus, FaultPlan(error=0.2, lost_reply=0.2, timeout=0.1, seed=7), sleep=no_sleep
        )
        writer = make_writer(faulty, chunk_bytes=64, retry=RetryPolicy(initial=0, attempts=60))
        for n in range(200):
            writer.write(Custom(payload=n))
        writer.close()
        assert set(faulty.injected) == {"error", "lost_reply", "timeout"}
        got = messages(read_all(bus))
        assert [m for _, m in got[:-1]] == [Custom(payload=n) for n in range(200)]
        assert [seq for seq, _ in got] == list(range(201))

    def test_retries_stop_at_the_policy_limit(self, bus: MemoryTransport) -> None:
        """When attempts run out the writer fails with DeliveryError caused by the last error."""
        scripted = ScriptedTransport(bus, ["error"] * 10)
        writer = make_writer(scripted, retry=RetryPolicy(initial=0, attempts=3))
        writer.write(Log(message="x"))
        with pytest.raises(DeliveryError) as info:
            writer.flush()
        assert scripted.puts == ["error"] * 3
        assert isinstance(info.value.__cause__, TransientStoreError)
        text = str(info.value)
        assert "retried" not in text.replace("retry policy", "")
        assert re.search(
            r"Gave up after 3 attempts over \d+\.\d s \(the retry policy: deadline 120 s, "
            r"at most 3 attempts\)\.$",
            text,
        ), text


class TestDeliveryFailure:
    """A permanent failure is raised on the next call and at close, naming what was lost."""

    def test_permanent_failure_names_the_undelivered_range(self, bus: MemoryTransport) -> None:
        """DeliveryError from flush, the next write and close, naming indices first..last."""
        scripted = ScriptedTransport(bus, ["ok", "permanent"])
        writer = make_writer(scripted)
        writer.write(Log(message="0"))
        writer.flush()
        writer.write(Log(message="1"))
        writer.write(Log(message="2"))
        with pytest.raises(DeliveryError) as info:
            writer.flush()
        error = info.value
        assert (error.first, error.last, error.undelivered) == (1, 2, 2)
        assert str(error).startswith(
            f"2 messages (indices 1..2) were not delivered to {bus.url}/s/streams/w: "
        )
        assert isinstance(error.__cause__, PermanentStoreError)
        assert writer.error is error
        with pytest.raises(DeliveryError) as again:
            writer.write(Log(message="3"))
        assert again.value is error
        with pytest.raises(DeliveryError) as at_close:
            writer.close()
        assert at_close.value is error
        assert writer.delivered == 1
        assert messages(read_all(bus)) == [(0, Log(message="0"))]

    def test_background_failure_surfaces_on_the_next_write(
        self, bus: MemoryTransport, wait_until: WaitUntil
    ) -> None:
        """A chunk sealed on size that fails for good makes the next write raise."""
        scripted = ScriptedTransport(bus, ["permanent"])
        writer = make_writer(scripted, chunk_bytes=10)
        writer.write(Log(message="big enough to seal"))
        wait_until(lambda: writer.error is not None)
        with pytest.raises(DeliveryError, match=r"1 messages \(indices 0..0\)"):
            writer.write(Log(message="next"))
        assert writer.written == 1

    def test_foreign_object_at_the_next_key_is_skipped(
        self, bus: MemoryTransport, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A stranger holding the writer's next key: the writer moves on, losing nothing,
        and the reader reports the stranger."""
        assert bus.put_if_absent(chunk_key(SESSION, "w", 0), b"not ours")
        assert bus.put_if_absent(chunk_key(SESSION, "w", 2), b"x" * 100_000)
        writer = make_writer(bus)
        with caplog.at_level(logging.WARNING, logger="pipes_bus"):
            writer.write(Log(message="a"))
            writer.flush()
            writer.write(Log(message="b"))
            writer.close()
        assert [r.getMessage() for r in caplog.records] == [
            f"{bus.url}/{chunk_key(SESSION, 'w', n)} holds an object this writer did not write; "
            "writing to the next key."
            for n in (0, 2)
        ]
        assert stored_chunks(bus) == [(1, 0, 1, False), (3, 1, 2, True)]
        items = read_all(bus)
        faults = [i for i in items if isinstance(i, StreamFault)]
        assert [(f.key, f.reason) for f in faults] == [
            (chunk_key(SESSION, "w", 0), "foreign"),
            (chunk_key(SESSION, "w", 2), "foreign"),
        ]
        events = [(i.seq, i.chunk, i.message) for i in items if isinstance(i, Event)]
        assert events == [
            (0, 1, Log(message="a")),
            (1, 3, Log(message="b")),
            (2, 3, Closed(count=2, time=events[2][2].time)),
        ]

    def test_a_stream_taken_over_by_strangers_fails_delivery(self, bus: MemoryTransport) -> None:
        """64 occupied keys in a row: the writer gives up with DeliveryError, not a loop."""
        for n in range(64):
            assert bus.put_if_absent(chunk_key(SESSION, "w", n), b"junk")
        writer = make_writer(bus)
        writer.write(Log(message="a"))
        with pytest.raises(DeliveryError) as info:
            writer.flush()
        assert isinstance(info.value.__cause__, PermanentStoreError)
        assert "64 keys in a row" in str(info.value)


class TestClose:
    """close(): the closed message, and the writer's end."""

    def test_close_writes_closed_with_the_count_in_a_final_chunk(
        self, bus: MemoryTransport
    ) -> None:
        """The last chunk is marked final and ends with Closed(count=messages before it)."""
        writer = make_writer(bus)
        writer.write(Log(message="a"))
        writer.write(Log(message="b"))
        writer.close()
        assert writer.closed
        assert stored_chunks(bus) == [(0, 0, 3, True)]
        got = messages(read_all(bus))
        assert got[2][1] == Closed(count=2, time=got[2][1].time)
        assert got[2][1].time > 0

    def test_closing_an_empty_writer_publishes_closed(self, bus: MemoryTransport) -> None:
        """A writer closed at once still publishes one final chunk holding Closed(count=0)."""
        make_writer(bus).close()
        assert stored_chunks(bus) == [(0, 0, 1, True)]
        [(seq, closed)] = messages(read_all(bus))
        assert (seq, closed) == (0, Closed(count=0, time=closed.time))

    def test_close_twice_is_a_no_op_and_writing_after_close_fails(
        self, bus: MemoryTransport
    ) -> None:
        """A second close does nothing; write afterwards raises WriterClosedError; flush returns."""
        writer = make_writer(bus)
        writer.close()
        writer.close()
        with pytest.raises(WriterClosedError, match=r"it has been closed\. Open a new writer\."):
            writer.write(Log(message="late"))
        writer.flush()
        assert stored_chunks(bus) == [(0, 0, 1, True)]

    def test_close_records_an_exception(self, bus: MemoryTransport) -> None:
        """close(exception) sends it, type and message, in the closed message."""
        writer = make_writer(bus)
        try:
            raise ValueError("boom")
        except ValueError as exc:
            writer.close(exc)
        [(_, closed)] = messages(read_all(bus))
        assert isinstance(closed, Closed)
        assert closed.exception is not None
        assert (closed.exception.type, closed.exception.message) == ("ValueError", "boom")
        assert len(closed.exception.stack) == 1

    def test_close_accepts_an_exception_info(self, bus: MemoryTransport) -> None:
        """close(ExceptionInfo) sends it unchanged."""
        info = ExceptionInfo(type="Remote", message="far away", stack=["line\n"])
        writer = make_writer(bus)
        writer.close(info)
        [(_, closed)] = messages(read_all(bus))
        assert isinstance(closed, Closed)
        assert closed.exception == info

    def test_close_escapes_text_that_cannot_be_encoded(self, bus: MemoryTransport) -> None:
        """An exception whose text has a lone surrogate (an undecodable file name) still
        closes the stream, with the character escaped."""
        writer = make_writer(bus)
        writer.write(Log(message="a"))
        error = FileNotFoundError(2, "No such file", "/data/\udcff.csv")
        error.__cause__ = OSError("\udcfe")
        writer.close(error)
        got = messages(read_all(bus))
        closed = got[1][1]
        assert isinstance(closed, Closed)
        assert closed.count == 1
        assert closed.exception is not None
        assert closed.exception.message == "[Errno 2] No such file: '/data/\\udcff.csv'"
        assert closed.exception.cause is not None
        assert closed.exception.cause.message == "\\udcfe"

    def test_closed_is_bounded_and_says_what_it_cut(self, bus: MemoryTransport) -> None:
        """An exception with a 100 MB message, a deep stack and a long chain still closes
        the stream in a chunk every reader accepts; what was cut says so."""
        writer = make_writer(bus)
        huge = ValueError("x" * (100 * 1024 * 1024))
        error: BaseException = huge
        for n in range(30):
            link = KeyError(n)
            link.__cause__ = error
            error = link
        info = ExceptionInfo.from_exception(error)
        writer.close(msgspec.structs.replace(info, stack=[f"frame {i}\n" for i in range(500)]))
        items = SessionReader(bus, SESSION, discover_interval=0, max_chunk_bytes=2 * MiB).poll()
        [(_, closed)] = messages(items)
        assert isinstance(closed, Closed) and closed.exception is not None
        exc = closed.exception
        assert len(exc.stack) == 51
        assert exc.stack[10] == "... [450 frames omitted]\n"
        assert exc.stack[:10] == [f"frame {i}\n" for i in range(10)]
        chain = []
        link_info: ExceptionInfo | None = exc
        while link_info is not None:
            chain.append(link_info)
            link_info = link_info.cause
        assert len(chain) == 17
        assert chain[-1].message.endswith(" [the rest of the exception chain was cut]")
        small = ExceptionInfo.from_exception(huge)
        assert small.message == "x" * 16384 + "... [truncated: 104857600 characters in all]"

    def test_closed_of_a_small_exception_is_unchanged(self) -> None:
        """bounded() returns an exception within the limits as it is."""
        info = ExceptionInfo(type="E", message="m", stack=["s"] * 50)
        assert info.bounded() is info

    def test_repr_names_the_stream(self, bus: MemoryTransport) -> None:
        """repr(writer) shows the stream's full location."""
        writer = make_writer(bus)
        assert repr(writer) == f"<ChunkWriter {bus.url}/s/streams/w>"
        writer.close()


class TestRetryPolicy:
    """RetryPolicy: which errors are retried, how often, and how long it waits."""

    def run(self, policy: RetryPolicy, error: Exception, sleeps: list[float]) -> int:
        """Call a function that always raises ``error`` under ``policy``; return the calls."""
        calls = 0
        with pytest.raises(type(error)):
            for attempt in policy.retrying(sleeps.append):
                with attempt:
                    calls += 1
                    raise error
        return calls

    def test_transient_errors_are_retried_up_to_attempts(self) -> None:
        """A TransientStoreError is tried ``attempts`` times, sleeping between tries."""
        sleeps: list[float] = []
        calls = self.run(
            RetryPolicy(initial=0.5, maximum=1.0, attempts=4), TransientStoreError("x"), sleeps
        )
        assert calls == 4
        assert len(sleeps) == 3
        assert all(0 <= s <= 1.0 for s in sleeps)

    def test_other_errors_are_not_retried(self) -> None:
        """A PermanentStoreError (or anything not transient) is raised after one try."""
        sleeps: list[float] = []
        assert self.run(RetryPolicy(attempts=4), PermanentStoreError("x"), sleeps) == 1
        assert self.run(RetryPolicy(attempts=4), ValueError("x"), sleeps) == 1
        assert sleeps == []

    def test_deadline_bounds_the_whole_sequence(self) -> None:
        """With a zero deadline there is exactly one try, whatever the attempts."""
        sleeps: list[float] = []
        assert self.run(RetryPolicy(deadline=0, attempts=10), TransientStoreError("x"), sleeps) == 1
