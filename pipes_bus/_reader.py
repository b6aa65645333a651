"""SessionReader: follows every writer's stream in a session, exactly once, in order."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, Union

import msgspec

from . import _keys
from ._chunk import ChunkProblem, parse_chunk
from ._errors import ConfigurationError, ObjectTooLargeError, TransientStoreError
from ._retry import PollSchedule
from ._schema import Closed, Message, UnknownMessage
from .transports import Transport

__all__ = ["Event", "SessionCursor", "SessionReader", "StreamCursor", "StreamFault"]

MiB = 1024 * 1024


class Event(msgspec.Struct, frozen=True, gc=False):
    """One delivered message: who wrote it, its index in that writer's stream, and the chunk."""

    writer: str
    seq: int
    chunk: int
    message: Message | UnknownMessage
    unknown_fields: dict[str, Any] | None = None


class StreamFault(msgspec.Struct, frozen=True):
    """Something in a stream that could not be delivered, and why.

    ``reason`` is one of: corrupt, truncated, foreign, gap, too_large, newer_protocol,
    unauthenticated. ``lost`` is the (first, last) message indices known to be lost.
    """

    writer: str
    key: str
    reason: str
    detail: str
    lost: tuple[int, int] | None = None

    def __str__(self) -> str:
        return f"{self.reason} at {self.key}: {self.detail}"


Item = Union[Event, StreamFault]  # noqa: UP007


class StreamCursor(msgspec.Struct):
    """Where to resume one stream: the chunk holding ``seq``, the next undelivered index."""

    chunk: int = 0
    seq: int = 0
    closed: bool = False


class SessionCursor(msgspec.Struct):
    """A resumable position in every stream of a session. Save it with :meth:`dumps`."""

    session: str
    streams: dict[str, StreamCursor] = {}

    def advance(self, event: Event) -> None:
        """Mark ``event`` as consumed."""
        cursor = self.streams.get(event.writer)
        if cursor is None:
            cursor = self.streams[event.writer] = StreamCursor()
        cursor.chunk = event.chunk
        cursor.seq = event.seq + 1
        if type(event.message) is Closed:
            cursor.closed = True

    def dumps(self) -> bytes:
        """The cursor as JSON."""
        return msgspec.json.encode(self)

    @classmethod
    def loads(cls, data: bytes | str) -> SessionCursor:
        """A cursor saved with :meth:`dumps`."""
        return msgspec.json.decode(data, type=cls)


class _Stream:
    __slots__ = ("chunk", "closed", "idle_since", "last", "scanned_at", "seq")

    def __init__(self, chunk: int = 0, seq: int = 0, closed: bool = False) -> None:
        self.chunk = chunk  # next chunk to read
        self.seq = seq  # next message index to deliver
        self.closed = closed
        self.last: Event | None = None
        self.idle_since = 0.0
        self.scanned_at = 0.0


class SessionReader:
    """Reads a session's streams: discovers writers, probes each stream's next chunk.

    :meth:`poll` makes one pass and returns everything available, in order per writer;
    :meth:`follow` polls adaptively until told to stop. Nothing is yielded twice, and
    anything that cannot be delivered is yielded as a :class:`StreamFault` naming the key.

    ``max_chunk_bytes`` bounds a chunk both as stored and once decompressed (so a
    decompression bomb is a ``corrupt`` fault, not an out-of-memory); ``discover_interval``
    and ``scan_interval`` are in seconds of ``clock``.
    """

    def __init__(
        self,
        transport: Transport,
        session: str,
        *,
        cursor: SessionCursor | None = None,
        key: bytes | None = None,
        max_chunk_bytes: int = 64 * MiB,
        discover_interval: float = 1.0,
        scan_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.session = _keys.validate_id("session id", session)
        self._key = key
        self.max_chunk_bytes = max_chunk_bytes
        self.discover_interval = discover_interval
        self.scan_interval = scan_interval
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._rejected: set[str] = set()
        self._discovered_at: float | None = None
        self.last_error: Exception | None = None
        self.behind = False
        if cursor is not None:
            if cursor.session != session:
                raise ConfigurationError(
                    f"The cursor is for session {cursor.session!r}, not {session!r}."
                )
            for writer, c in cursor.streams.items():
                self._streams[writer] = _Stream(c.chunk, c.seq, c.closed)

    # --- state --------------------------------------------------------------------------

    @property
    def writers(self) -> list[str]:
        """Every writer seen so far, in discovery order."""
        return list(self._streams)

    @property
    def open_writers(self) -> list[str]:
        """Writers whose ``closed`` message has not been read."""
        return [w for w, s in self._streams.items() if not s.closed]

    def last_event(self, writer: str) -> Event | None:
        """The last message delivered from ``writer``'s stream (in this reader)."""
        stream = self._streams.get(writer)
        return stream.last if stream else None

    def cursor(self) -> SessionCursor:
        """A cursor just past everything this reader has returned."""
        return SessionCursor(
            self.session,
            {w: StreamCursor(s.chunk, s.seq, s.closed) for w, s in self._streams.items()},
        )

    # --- reading ------------------------------------------------------------------------

    def poll(self, *, discover: bool | None = None, limit: int | None = 65536) -> list[Item]:
        """One pass over the session; everything available now, in order per writer.

        With ``limit``, the pass stops at the first chunk boundary past that many items
        and :attr:`behind` is True until a pass reads everything there was.
        """
        out: list[Item] = []
        self.behind = False
        now = self._clock()
        if discover or (
            discover is None
            and (
                not self._streams  # nobody yet: look every poll (the poll backs off)
                or self._discovered_at is None
                or now - self._discovered_at >= self.discover_interval
            )
        ):
            self.discover(out)
        for writer, stream in list(self._streams.items()):
            if stream.closed:
                continue
            if limit is not None and len(out) >= limit:
                self.behind = True
                break
            before = stream.seq
            self._drain(writer, stream, out, limit)
            if stream.seq != before:
                stream.idle_since = now
            elif (
                now - stream.idle_since >= self.scan_interval
                and now - stream.scanned_at >= self.scan_interval
            ):
                stream.scanned_at = now
                self._scan(writer, stream, out)
        return out

    def discover(self, out: list[Item] | None = None) -> list[str]:
        """List the session's streams; return writers not seen before."""
        self._discovered_at = self._clock()
        names = self._call(lambda: self.transport.list(_keys.streams_prefix(self.session)))
        new: list[str] = []
        for name in names or ():
            if name in self._streams or name in self._rejected:
                continue
            if not _keys.is_id(name):
                self._rejected.add(name)
                if out is not None:
                    out.append(
                        StreamFault(
                            name,
                            f"{_keys.streams_prefix(self.session)}/{name}",
                            "foreign",
                            "this is not a valid writer stream name; it was ignored",
                        )
                    )
                continue
            stream = self._streams[name] = _Stream()
            stream.idle_since = self._clock()
            new.append(name)
        return new

    def scan(self) -> list[Item]:
        """Look for gaps and strangers in every open stream by listing it (costs a LIST each)."""
        out: list[Item] = []
        now = self._clock()
        for writer, stream in list(self._streams.items()):
            if not stream.closed:
                stream.scanned_at = now
                self._drain(writer, stream, out)
                self._scan(writer, stream, out)
        return out

    def follow(
        self,
        *,
        until: Callable[[], bool] | None = None,
        schedule: PollSchedule | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[Item]:
        """Poll adaptively and yield items as they arrive.

        Stops after a final full pass once ``until()`` is true (checked after each poll),
        or when every discovered writer has closed if ``until`` is None.
        """
        schedule = schedule or PollSchedule(self.transport.capabilities.poll, 1.0)
        while True:
            batch = self.poll()
            yield from batch
            done = until() if until is not None else bool(self._streams) and not self.open_writers
            if done:
                # A full pass: poll() stops at its item limit, so go on until nothing is left.
                yield from self.poll(discover=True)
                while self.behind:
                    yield from self.poll()
                return
            if not self.behind:
                sleep(schedule.next(bool(batch)))

    # --- internals ----------------------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except TransientStoreError as exc:
            # Not a loss: the same key is tried again on the next poll.
            self.last_error = exc
            return None

    def _drain(
        self, writer: str, stream: _Stream, out: list[Item], limit: int | None = None
    ) -> None:
        while not stream.closed:
            if limit is not None and len(out) >= limit:
                self.behind = True
                return
            key = _keys.chunk_key(self.session, writer, stream.chunk)
            try:
                data = self._call(
                    functools.partial(self.transport.get, key, max_size=self.max_chunk_bytes)
                )
            except ObjectTooLargeError as exc:
                out.append(StreamFault(writer, key, "too_large", str(exc)))
                stream.chunk += 1
                continue
            if data is None:
                return
            try:
                chunk = parse_chunk(
                    data,
                    writer=writer,
                    chunk=stream.chunk,
                    key=self._key,
                    max_body_bytes=self.max_chunk_bytes,
                )
            except ChunkProblem as problem:
                out.append(StreamFault(writer, key, problem.reason, problem.detail))
                stream.chunk += 1
                continue
            header = chunk.header
            if header.first > stream.seq:
                out.append(
                    StreamFault(
                        writer,
                        key,
                        "gap",
                        f"messages {stream.seq}..{header.first - 1} never arrived "
                        "(lost before this chunk)",
                        (stream.seq, header.first - 1),
                    )
                )
                stream.seq = header.first
            messages = chunk.messages
            skip = stream.seq - header.first
            number = stream.chunk
            extra = chunk.unknown_fields
            if extra is None:
                out.extend(
                    [
                        Event(writer, header.first + i, number, messages[i])
                        for i in range(skip, len(messages))
                    ]
                )
            else:
                out.extend(
                    [
                        Event(writer, header.first + i, number, messages[i], extra.get(i))
                        for i in range(skip, len(messages))
                    ]
                )
            if len(messages) > skip:
                last = out[-1]
                assert isinstance(last, Event)
                stream.last = last
            stream.seq = max(stream.seq, header.first + len(messages))
            stream.chunk += 1
            if header.final:
                stream.closed = True

    def _scan(self, writer: str, stream: _Stream, out: list[Item]) -> None:
        """List a stream past its cursor: report strangers, and skip a missing chunk."""
        prefix = _keys.stream_prefix(self.session, writer)
        after = f"{stream.chunk - 1:020d}" if stream.chunk > 0 else None
        names = self._call(lambda: self.transport.list(prefix, after=after))
        if not names:
            return
        later: list[int] = []
        for name in names:
            number = _keys.chunk_number(name)
            if number is None:
                if name not in self._rejected:
                    self._rejected.add(name)
                    out.append(
                        StreamFault(writer, f"{prefix}/{name}", "foreign", "not a chunk; ignored")
                    )
            elif number >= stream.chunk:
                later.append(number)
        # A missing chunk with later ones present: re-read first (it may have just
        # appeared), then report the gap and move past it.
        self._drain(writer, stream, out)
        candidates = [n for n in later if n >= stream.chunk]
        if candidates and min(candidates) > stream.chunk:
            first_later = min(candidates)
            out.append(
                StreamFault(
                    writer,
                    _keys.chunk_key(self.session, writer, stream.chunk),
                    "gap",
                    f"chunks {stream.chunk}..{first_later - 1} are missing while chunk "
                    f"{first_later} exists",
                )
            )
            stream.chunk = first_later
            self._drain(writer, stream, out)
