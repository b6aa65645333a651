"""SessionReader: follows every writer's stream in a session, exactly once, in order."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipes_bus._errors import (
    ConfigurationError,
    TransientStoreError,
    UnreadableObjectError,
)
from pipes_bus._log.items import (
    Event,
    Item,
    SessionCursor,
    StreamCursor,
    StreamFault,
)
from pipes_bus._log.schedule import Schedule
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.chunk import BadMessage, ChunkProblem, parse_chunk, parse_header
from pipes_bus._wire.schema import Closed, Opened
from pipes_bus.transports import Transport

__all__ = ["SessionReader"]

MiB = 1024 * 1024
# Clock comparisons allow for float rounding: a sleep of exactly (due - now) must be enough.
_EPSILON = 1e-6
# Seconds one stream may be read for in one pass before the pass returns (and comes straight
# back): on a slow store, a writer publishing a chunk per round trip would otherwise keep the
# pass going, and hold every event, until it stopped. Fast stores never reach it.
_DRAIN_BUDGET = 0.1


class _Fetch:
    """One chunk read on a background thread while the reader decodes the one before."""

    def __init__(
        self, transport: Transport, session: str, writer: str, chunk: int, max_size: int
    ) -> None:
        self.chunk = chunk
        self._get = functools.partial(
            transport.get, _keys.chunk_key(session, writer, chunk), max_size=max_size
        )
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pipes-bus-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._data = self._get()
        except BaseException as exc:  # handed to the reader's thread by result()
            self._error = exc

    def result(self) -> bytes | None:
        """The chunk's bytes (None if it was not there), or what the read raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._data


def _rule_fault(writer: str, key: str, detail: str) -> StreamFault:
    """A stream that breaks the protocol's stream rules (its messages are still delivered)."""
    return StreamFault(writer, key, "corrupt", f"the stream breaks the protocol: {detail}")


def _is_final(data: bytes) -> bool:
    try:
        return parse_header(data)[0].final
    except ChunkProblem:
        return False


class _Stream:
    __slots__ = (
        "chunk",
        "closed",
        "due",
        "idle_since",
        "interval",
        "last",
        "scanned_at",
        "seq",
    )

    def __init__(self, chunk: int = 0, seq: int = 0, closed: bool = False) -> None:
        self.chunk = chunk  # next chunk to read
        self.seq = seq  # next message index to deliver
        self.closed = closed
        self.last: Event | None = None
        self.idle_since = 0.0
        self.scanned_at = 0.0
        self.interval = 0.0  # current probe interval (adaptive, per stream)
        self.due = 0.0  # when to probe next, on the reader's clock


class SessionReader:
    """Reads a session's streams: discovers writers, probes each stream's next chunk.

    :meth:`poll` makes one pass and returns everything available, in order per writer;
    :meth:`follow` polls adaptively until told to stop. Nothing is yielded twice, and
    anything that cannot be delivered is yielded as a :class:`StreamFault` naming the key.

    With ``expect_opened`` (what sessions use: every worker's stream opens with ``opened``),
    a stream whose first message is another kind gets a ``corrupt`` fault before it.
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
        schedule: Schedule | None = None,
        idle_rate: float | None = None,
        expect_opened: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.expect_opened = expect_opened
        caps = transport.capabilities
        # Each stream is probed on its own adaptive schedule: fast while data flows,
        # backing off to `maximum` when idle, and further if needed so that an idle
        # session costs at most `idle_rate` requests per second, whatever the writers.
        self.schedule = schedule or Schedule(caps.poll, 1.0)
        self.idle_rate = caps.idle_rate if idle_rate is None else idle_rate
        self._rotation = 0
        self._phase = 0.0
        self._discover_every = self.schedule.minimum
        self.session = _keys.validate_id("session id", session)
        self._key = key
        self.max_chunk_bytes = max_chunk_bytes
        self.discover_interval = discover_interval
        self.scan_interval = scan_interval
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._read_ahead = transport.capabilities.read_ahead
        self._ahead: dict[str, _Fetch] = {}  # by writer: its next chunk, being fetched
        self._rejected: set[str] = set()  # keys already reported as foreign
        self._discovered_at: float | None = None
        self.last_error: Exception | None = None
        self.behind = False
        # One poll reads at most about this much before returning (memory stays bounded
        # however large the messages; `behind` says there is more).
        self.max_poll_bytes = max(max_chunk_bytes, 32 * MiB)
        self._poll_bytes = 0
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

    def poll(
        self,
        *,
        discover: bool | None = None,
        limit: int | None = 65536,
        due_only: bool = False,
    ) -> list[Item]:
        """One pass over the session; everything available now, in order per writer.

        By default every open stream is probed, and the session is listed for new
        writers every ``discover_interval`` (every poll until a writer appears).
        With ``due_only`` (what :meth:`follow` and sessions use), each stream is probed on
        its own adaptive schedule and listing backs off too, so an idle session costs at
        most ``idle_rate`` requests per second. ``discover=True`` lists and probes
        everything now. With ``limit``, the pass stops at the first chunk boundary past
        that many items and :attr:`behind` is True until a pass reads everything there was.
        """
        out: list[Item] = []
        self.behind = False
        self._poll_bytes = 0
        now = self._clock()
        force = bool(discover) or not due_only
        every = self._discover_every if due_only else self.discover_interval
        if discover or (
            discover is None
            and (
                self._discovered_at is None
                or (not self._streams and not due_only)
                or now - self._discovered_at + _EPSILON >= every
            )
        ):
            found = self.discover(out)
            self._discover_every = (
                0.0
                if self.discover_interval <= 0
                else self._next_interval(self._discover_every, bool(found), self.discover_interval)
            )
        streams = list(self._streams.items())
        # Start where the last pass stopped, so a busy writer cannot starve the others.
        self._rotation = (self._rotation + 1) % max(1, len(streams))
        streams = streams[self._rotation :] + streams[: self._rotation]
        for writer, stream in streams:
            if stream.closed or (not force and now + _EPSILON < stream.due):
                continue
            if limit is not None and (len(out) >= limit or self._poll_bytes >= self.max_poll_bytes):
                self.behind = True
                break
            before = stream.seq
            cut = self._drain(writer, stream, out, limit)
            progressed = stream.seq != before
            previous = stream.interval
            stream.interval = self._next_interval(previous, progressed, self.schedule.maximum)
            # Cut short by a limit: more is there now, so the stream stays due.
            stream.due = now if cut else now + stream.interval
            if previous <= self.schedule.maximum < stream.interval:
                # Entering the idle budget: spread streams' phases, so their probes are
                # evenly spaced instead of arriving together once per interval.
                # (A golden-ratio sequence spaces phases evenly, however many streams.)
                self._phase = (self._phase + 0.6180339887498949) % 1.0
                stream.due = now + stream.interval * (0.5 + self._phase)
                # Gap scans (a LIST each) are spread the same way.
                stream.scanned_at = now + 6 * stream.interval * self._phase
            if progressed:
                stream.idle_since = now
            else:
                every = (
                    max(self.scan_interval, 6 * self._idle_ceiling())
                    if due_only
                    else (self.scan_interval)
                )
                if now - stream.idle_since >= every and now - stream.scanned_at >= every:
                    stream.scanned_at = now
                    self._scan(writer, stream, out)
        return out

    def _next_interval(self, current: float, progressed: bool, maximum: float) -> float:
        s = self.schedule
        if progressed or current <= 0:
            return s.minimum
        nxt = max(s.minimum, current * s.factor)
        if nxt > maximum:
            # Backed off past the usual maximum: go straight to the idle budget's interval.
            return max(maximum, self._idle_ceiling())
        return nxt

    def _idle_ceiling(self) -> float:
        # An idle session spends at most idle_rate requests per second: about 70% on
        # probes (one per open stream), the rest on listings and gap scans (see poll).
        return 1.4 * (len(self.open_writers) + 1) / self.idle_rate

    def wait_time(self) -> float:
        """Seconds until the next probe or listing is due (0 if one is due now)."""
        now = self._clock()
        due = [s.due for s in self._streams.values() if not s.closed]
        if self._discovered_at is not None:
            due.append(self._discovered_at + self._discover_every)
        else:
            due.append(now)
        return max(0.0, min(due) - now)

    def discover(self, out: list[Item] | None = None) -> list[str]:
        """List the session's streams; return writers not seen before."""
        self._discovered_at = self._clock()
        prefix = _keys.streams_prefix(self.session)
        try:
            names = self._call(lambda: self.transport.list(prefix))
        except UnreadableObjectError as exc:
            if prefix not in self._rejected:
                self._rejected.add(prefix)
                if out is not None:
                    out.append(StreamFault("", prefix, exc.reason, str(exc)))
            return []
        new: list[str] = []
        for name in names or ():
            where = f"{_keys.streams_prefix(self.session)}/{name}"
            if name in self._streams or where in self._rejected:
                continue
            if not _keys.is_id(name):
                self._rejected.add(where)
                if out is not None:
                    out.append(
                        StreamFault(
                            name,
                            where,
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
        schedule: Schedule | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[Item]:
        """Poll adaptively and yield items as they arrive.

        Stops after a final full pass once ``until()`` is true (checked after each poll),
        or when every discovered writer has closed if ``until`` is None.
        """
        if schedule is not None:
            self.schedule = schedule
        while True:
            batch = self.poll(due_only=True)
            yield from batch
            done = until() if until is not None else bool(self._streams) and not self.open_writers
            if done:
                # A full pass: poll() stops at its item limit, so go on until nothing is left.
                yield from self.poll(discover=True)
                while self.behind:
                    yield from self.poll(discover=True)
                return
            if not self.behind:
                sleep(self.wait_time())

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
    ) -> bool:
        """Read the stream's chunks in order; True when a limit cut the read short."""
        started = self._clock()
        while not stream.closed:
            if limit is not None and (
                len(out) >= limit
                or self._poll_bytes >= self.max_poll_bytes
                or self._clock() - started >= _DRAIN_BUDGET
            ):
                self.behind = True
                return True
            key = _keys.chunk_key(self.session, writer, stream.chunk)
            fetch = self._ahead.pop(writer, None)
            try:
                data = self._call(
                    fetch.result
                    if fetch is not None and fetch.chunk == stream.chunk
                    else functools.partial(self.transport.get, key, max_size=self.max_chunk_bytes)
                )
            except UnreadableObjectError as exc:
                # One object that cannot be read (too large, not a regular file, access
                # denied) is a fault at its key; the stream and every other go on.
                out.append(StreamFault(writer, key, exc.reason, str(exc)))
                stream.chunk += 1
                continue
            if data is None:
                return False
            if self._read_ahead and not _is_final(data):
                # The next chunk is fetched while this one is decoded.
                self._ahead[writer] = _Fetch(
                    self.transport, self.session, writer, stream.chunk + 1, self.max_chunk_bytes
                )
            self._poll_bytes += len(data)
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
            start = len(out)
            if extra is None and not chunk.bad:
                out.extend(
                    [
                        Event(writer, header.first + i, number, messages[i])  # type: ignore[arg-type]
                        for i in range(skip, len(messages))
                    ]
                )
            else:
                self._deliver_each(writer, key, number, chunk, skip, out)
            if self.expect_opened and len(out) > start and stream.seq == 0 and skip == 0:
                first = out[start]
                if type(first) is Event and type(first.message) is not Opened:
                    out.insert(start, _rule_fault(writer, key, "its first message is not `opened`"))
            if chunk.bad or not len(messages) > skip:
                for item in reversed(out[start:]):
                    if type(item) is Event:
                        stream.last = item
                        break
            else:
                last = out[-1]
                assert isinstance(last, Event)
                stream.last = last
            stream.seq = max(stream.seq, header.first + len(messages))
            stream.chunk += 1
            if header.final:
                stream.closed = True
                closed = messages[-1] if messages else None
                if type(closed) is Closed and closed.count != stream.seq - 1:
                    out.append(
                        _rule_fault(
                            writer,
                            key,
                            f"`closed` says {closed.count} messages came before it; "
                            f"the stream holds {stream.seq - 1}",
                        )
                    )
                self._after_final(writer, stream, out)
        return False

    def _deliver_each(
        self, writer: str, key: str, number: int, chunk: Any, skip: int, out: list[Item]
    ) -> None:
        first = chunk.header.first
        extra = chunk.unknown_fields or {}
        for i in range(skip, len(chunk.messages)):
            message = chunk.messages[i]
            if type(message) is BadMessage:
                seq = first + i
                out.append(
                    StreamFault(
                        writer,
                        key,
                        "corrupt",
                        f"message {seq} is not delivered: {message.detail}",
                        (seq, seq),
                    )
                )
            else:
                out.append(Event(writer, first + i, number, message, extra.get(i)))

    def _after_final(self, writer: str, stream: _Stream, out: list[Item]) -> None:
        """Nothing may follow a final chunk: one look at the next key says so if it does."""
        key = _keys.chunk_key(self.session, writer, stream.chunk)
        try:
            data = self._call(lambda: self.transport.get(key, max_size=0))
        except UnreadableObjectError:
            data = b"?"
        if data is not None:
            out.append(
                StreamFault(
                    writer,
                    key,
                    "corrupt",
                    "an object follows the stream's final chunk; nothing after `closed` is "
                    "delivered",
                )
            )

    def _scan(self, writer: str, stream: _Stream, out: list[Item]) -> None:
        """List a stream past its cursor: report strangers, and skip a missing chunk."""
        prefix = _keys.stream_prefix(self.session, writer)
        after = f"{stream.chunk - 1:020d}" if stream.chunk > 0 else None
        try:
            names = self._call(lambda: self.transport.list(prefix, after=after))
        except UnreadableObjectError as exc:
            if prefix not in self._rejected:
                self._rejected.add(prefix)
                out.append(StreamFault(writer, prefix, exc.reason, str(exc)))
            return
        if not names:
            return
        later: list[int] = []
        for name in names:
            number = _keys.chunk_number(name)
            if number is None:
                where = f"{prefix}/{name}"
                if where not in self._rejected:
                    self._rejected.add(where)
                    out.append(StreamFault(writer, where, "foreign", "not a chunk; ignored"))
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
