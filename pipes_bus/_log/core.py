"""The reader's core, without I/O: what to fetch next, when, and what was heard.

A pass over a session (:meth:`ReaderCore.poll`, :meth:`ReaderCore.scan`) is a generator: it
yields the store requests it needs (:class:`Get`, :class:`List`, and :class:`Prefetch`, a
get the driver may start early and answer later) and is sent back each outcome with the
time it arrived, ``(outcome, now)``; its return value is the pass's events and faults. An
outcome is what the transport returned, or the exception it raised. The blocking
:class:`~pipes_bus.log.SessionReader` and the asyncio session drive the same core, the way
httpcore drives h11, so both share every rule, and tests run it with no store and no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import msgspec

from pipes_bus._errors import ConfigurationError, TransientStoreError, UnreadableObjectError
from pipes_bus._log.items import Event, Item, SessionCursor, StreamCursor, StreamFault
from pipes_bus._log.schedule import Schedule
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.chunk import BadMessage, ChunkProblem, parse_chunk, parse_header
from pipes_bus._wire.control import MAX_CONTROL_BYTES, Beat, verify
from pipes_bus._wire.limits import MiB
from pipes_bus._wire.schema import Closed, Opened

__all__ = ["Get", "List", "Prefetch", "ReaderCore", "Request"]

# Clock comparisons allow for float rounding: a sleep of exactly (due - now) must be enough.
_EPSILON = 1e-6
# Seconds one stream may be read for in one pass before the pass returns (and comes straight
# back): on a slow store, a writer publishing a chunk per round trip would otherwise keep the
# pass going, and hold every event, until it stopped. Fast stores never reach it.
DRAIN_BUDGET = 0.1
_BEAT = msgspec.json.Decoder(Beat)


class Get(NamedTuple):
    """Read the object at ``key`` (at most ``max_size`` bytes). ``slot`` names the stream a
    prefetch for it may have been started for."""

    key: str
    max_size: int | None
    slot: str | None = None


class List(NamedTuple):
    """List the direct children of ``prefix`` (after ``after``)."""

    prefix: str
    after: str | None = None


class Prefetch(NamedTuple):
    """Start ``get`` now, answer it when it is asked for (the reply to this request is None)."""

    get: Get


Request = Get | List | Prefetch
# What a pass is sent back: the outcome of its last request, and the time it arrived.
Reply = tuple[Any, float]
Pass = Generator[Request, Reply, Any]


class _Stream:
    __slots__ = ("chunk", "closed", "due", "idle_since", "interval", "last", "scanned_at", "seq")

    def __init__(self, chunk: int = 0, seq: int = 0, closed: bool = False) -> None:
        self.chunk = chunk  # next chunk to read
        self.seq = seq  # next message index to deliver
        self.closed = closed
        self.last: Event | None = None
        self.idle_since = 0.0
        self.scanned_at = 0.0
        self.interval = 0.0  # current probe interval (adaptive, per stream)
        self.due = 0.0  # when to probe next


def _rule_fault(writer: str, key: str, detail: str) -> StreamFault:
    """A stream that breaks the protocol's stream rules (its messages are still delivered)."""
    return StreamFault(writer, key, "corrupt", f"the stream breaks the protocol: {detail}")


def _is_final(data: bytes) -> bool:
    try:
        return parse_header(data)[0].final
    except ChunkProblem:
        return False


class ReaderCore:
    """Every stream of one session: cursors, schedules, faults. Does no I/O.

    ``poll`` is the store's fastest useful probe interval, ``idle_rate`` the requests per
    second an idle session may spend whatever its number of writers, ``read_ahead`` whether
    to prefetch a stream's next chunk while decoding one (worth it where each request waits
    on a network). With ``beats`` (what sessions use) it also follows the writers' beats,
    for liveness and news (see :meth:`read_beats`). ``claims`` names entries of the
    session's ``streams/`` folder that belong to another source (see :attr:`claimed`), not
    to a writer.
    """

    def __init__(
        self,
        session: str,
        *,
        poll: float = 0.05,
        idle_rate: float = 1.0,
        read_ahead: bool = False,
        cursor: SessionCursor | None = None,
        key: bytes | None = None,
        max_chunk_bytes: int = 64 * MiB,
        discover_interval: float = 1.0,
        scan_interval: float = 30.0,
        schedule: Schedule | None = None,
        expect_opened: bool = False,
        claims: frozenset[str] = frozenset(),
        beats: bool = False,
    ) -> None:
        self.session = _keys.validate_id("session id", session)
        # Each stream is probed on its own adaptive schedule: fast while data flows,
        # backing off to `maximum` when idle, and further if needed so that an idle
        # session costs at most `idle_rate` requests per second, whatever the writers.
        self.schedule = schedule or Schedule(poll, 1.0)
        self.idle_rate = idle_rate
        self.read_ahead = read_ahead
        self.expect_opened = expect_opened
        self.claims = claims
        #: Claimed entries found in the session's streams folder.
        self.claimed: set[str] = set()
        self._key = key
        self.max_chunk_bytes = max_chunk_bytes
        self.discover_interval = discover_interval
        self.scan_interval = scan_interval
        self._streams: dict[str, _Stream] = {}
        self._rejected: set[str] = set()  # keys already reported as foreign
        self._discovered_at: float | None = None
        self._discover_every = self.schedule.minimum
        self._rotation = 0
        self._phase = 0.0
        self.last_error: Exception | None = None
        self.behind = False
        # The beats feed: one listing after the last beat seen finds every writer's signs of
        # life; `heard` is when (on the driver's clock) each writer last gave one.
        self.beats = beats
        self.heard: dict[str, float] = {}
        self.beat_counts: dict[str, int] = {}
        # In a signed session a beat's name proves nothing: the latest of each writer (and
        # when it was seen) is read and checked only before the writer would be lost.
        self._unchecked: dict[str, tuple[str, float]] = {}
        self._beats_seen: set[str] = set()
        self._feed_at: float | None = None
        # One pass reads at most about this much before returning (memory stays bounded
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

    # --- state ------------------------------------------------------------------------------

    @property
    def writers(self) -> list[str]:
        """Every writer seen so far, in discovery order."""
        return list(self._streams)

    @property
    def open_writers(self) -> list[str]:
        """Writers whose ``closed`` message has not been read."""
        return [w for w, s in self._streams.items() if not s.closed]

    def last_event(self, writer: str) -> Event | None:
        """The last message delivered from ``writer``'s stream."""
        stream = self._streams.get(writer)
        return stream.last if stream else None

    def cursor(self) -> SessionCursor:
        """A cursor just past everything handed out."""
        return SessionCursor(
            self.session,
            {w: StreamCursor(s.chunk, s.seq, s.closed) for w, s in self._streams.items()},
        )

    def wait_time(self, now: float) -> float:
        """Seconds until the next probe or listing is due (0 if one is due now)."""
        due = [s.due for s in self._streams.values() if not s.closed]
        if self.beats and self.open_writers and self._feed_at is not None:
            due.append(self._feed_at + self.feed_every())
        if self._discovered_at is not None:
            due.append(self._discovered_at + self._discover_every)
        else:
            due.append(now)
        return max(0.0, min(due) - now)

    def idle_ceiling(self) -> float:
        """An idle stream's probe interval under the idle budget.

        An idle session spends at most ``idle_rate`` requests per second: about 70% on
        probes (one per open stream), the rest on listings and gap scans. A session that
        follows beats gives two thirds to the beats feed and a fifth to the probes, which
        then only back the wake beats up (a lost or late one costs latency, never data).
        """
        share = 5.0 if self.beats else 1.4
        return share * (len(self.open_writers) + 1) / self.idle_rate

    def feed_every(self) -> float:
        """Seconds between listings of the beats feed (two thirds of the idle budget: a
        writer that speaks after a quiet spell leaves a wake beat there, so the feed, not
        the per-stream probes, is what hears quiet writers soon, however many there are)."""
        return max(self.schedule.minimum, 1.5 / self.idle_rate)

    def read_beats(self, now: float, out: list[Item] | None = None) -> Pass:
        """List the beats feed: note who was heard, probe who has news."""
        self._feed_at = now
        prefix = _keys.beats_prefix(self.session)
        # The whole feed, every time: each writer keeps one beat there (it deletes the one
        # before), so one listing page covers a thousand writers, and a writer whose clock
        # is behind (or ahead of) the others' is never listed out of view.
        outcome, now = yield List(prefix, None)
        names = self._listed(outcome, prefix, out)
        if not isinstance(names, list):
            return  # not now, or a feed that cannot be listed (reported once)
        for name in names:
            if name in self._beats_seen:
                continue
            parsed = _keys.parse_beat(name)
            if parsed is None:
                where = f"{prefix}/{name}"
                if where not in self._rejected and out is not None:
                    self._rejected.add(where)
                    out.append(StreamFault("", where, "foreign", "not a beat; ignored"))
                continue
            self._beats_seen.add(name)
            _, wake, writer = parsed
            stream = self._streams.get(writer)
            if stream is None:
                self._discovered_at = None  # a writer not seen yet: list the streams soon
                continue
            if self._key is None:
                self.heard[writer] = now
            else:
                self._unchecked[writer] = (name, now)
            self.beat_counts[writer] = self.beat_counts.get(writer, 0) + 1
            if wake and not stream.closed:
                stream.due = now  # it has news: probe it on this pass
        # Names no longer listed were deleted (replaced by newer beats): forget them.
        self._beats_seen &= set(names)

    def verify(self, now: float, writers: list[str]) -> Pass:
        """Before a writer is declared lost: probe its stream, list the beats feed again,
        and (in a signed session) check its latest beat's signature. Returns what the
        probes delivered, and any forged beat."""
        out: list[Item] = []
        yield from self.read_beats(now, out)
        for writer in writers:
            stream = self._streams.get(writer)
            if stream is not None and not stream.closed:
                yield from self._drain(writer, stream, out, None, now)
            if writer in self._unchecked:
                yield from self._check_beat(writer, out)
        return out

    def _check_beat(self, writer: str, out: list[Item]) -> Pass:
        name, seen = self._unchecked.pop(writer)
        key = f"{_keys.beats_prefix(self.session)}/{name}"
        outcome, _ = yield Get(key, MAX_CONTROL_BYTES)
        if isinstance(outcome, TransientStoreError):
            self._unchecked.setdefault(writer, (name, seen))  # checked at the next look
        try:
            data = self._outcome(outcome)
        except UnreadableObjectError as exc:
            out.append(StreamFault(writer, key, exc.reason, str(exc)))
            return
        if data is None:
            return  # replaced by a newer beat since: the next listing finds that one
        try:
            beat = _BEAT.decode(data)
        except (msgspec.DecodeError, RecursionError):
            beat = None
        if beat is None or beat.writer != writer or not verify(self._key, beat):
            out.append(
                StreamFault(
                    writer,
                    key,
                    "unauthenticated",
                    "a beat not signed with the session's key; ignored",
                )
            )
            return
        self.heard[writer] = max(self.heard.get(writer, seen), seen)

    # --- passes -------------------------------------------------------------------------------

    def poll(
        self,
        now: float,
        *,
        discover: bool | None = None,
        limit: int | None = 65536,
        due_only: bool = False,
    ) -> Pass:
        """One pass over the session: everything available now, in order per writer.

        By default every open stream is probed, and the session is listed for new writers
        every ``discover_interval`` (every pass until a writer appears). With ``due_only``
        each stream is probed on its own adaptive schedule and listing backs off too, so an
        idle session costs at most ``idle_rate`` requests per second. ``discover=True``
        lists and probes everything now. With ``limit``, the pass stops at the first chunk
        boundary past that many items and :attr:`behind` is True until a pass reads
        everything there was.
        """
        out: list[Item] = []
        self.behind = False
        self._poll_bytes = 0
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
            found = yield from self.discover(now, out)
            self._discover_every = (
                0.0
                if self.discover_interval <= 0
                else self.schedule.step(
                    self._discover_every,
                    bool(found),
                    maximum=self.discover_interval,
                    ceiling=self.idle_ceiling(),
                )
            )
        if (
            self.beats
            and self._streams
            and (
                force
                or self._feed_at is None
                or now - self._feed_at + _EPSILON >= self.feed_every()
            )
        ):
            yield from self.read_beats(now, out)
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
            cut = yield from self._drain(writer, stream, out, limit, now)
            progressed = stream.seq != before
            previous = stream.interval
            stream.interval = self.schedule.step(previous, progressed, ceiling=self.idle_ceiling())
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
                    max(self.scan_interval, 6 * self.idle_ceiling())
                    if due_only
                    else self.scan_interval
                )
                if now - stream.idle_since >= every and now - stream.scanned_at >= every:
                    stream.scanned_at = now
                    yield from self._scan(writer, stream, out, now)
        return out

    def discover(self, now: float, out: list[Item] | None = None) -> Pass:
        """List the session's streams; return the writers not seen before."""
        self._discovered_at = now
        prefix = _keys.streams_prefix(self.session)
        outcome, now = yield List(prefix)
        names = self._listed(outcome, prefix, out)
        if names is False:
            return []
        new: list[str] = []
        for name in names or ():
            where = f"{prefix}/{name}"
            if name in self._streams or where in self._rejected:
                continue
            if name in self.claims:
                self.claimed.add(name)
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
            stream.idle_since = now
            new.append(name)
        return new

    def scan(self, now: float) -> Pass:
        """Look for gaps and strangers in every open stream by listing it (a LIST each)."""
        out: list[Item] = []
        for writer, stream in list(self._streams.items()):
            if not stream.closed:
                stream.scanned_at = now
                yield from self._drain(writer, stream, out, None, now)
                yield from self._scan(writer, stream, out, now)
        return out

    # --- inside a pass --------------------------------------------------------------------------

    def _listed(self, outcome: Any, prefix: str, out: list[Item] | None) -> Any:
        """A listing's names; None for "not now"; False (after one fault naming it) for a
        folder that cannot be listed."""
        try:
            return self._outcome(outcome)
        except UnreadableObjectError as exc:
            if prefix not in self._rejected:
                self._rejected.add(prefix)
                if out is not None:
                    out.append(StreamFault("", prefix, exc.reason, str(exc)))
            return False

    def _outcome(self, outcome: Any) -> Any:
        """The result of a request: None for "not now" (a transient failure, retried on the
        next pass: not a loss), the exception raised for anything else."""
        if isinstance(outcome, TransientStoreError):
            self.last_error = outcome
            return None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _drain(
        self, writer: str, stream: _Stream, out: list[Item], limit: int | None, now: float
    ) -> Pass:
        """Read the stream's chunks in order; True when a limit cut the read short."""
        started = now
        while not stream.closed:
            if limit is not None and (
                len(out) >= limit
                or self._poll_bytes >= self.max_poll_bytes
                or now - started >= DRAIN_BUDGET
            ):
                self.behind = True
                return True
            key = _keys.chunk_key(self.session, writer, stream.chunk)
            outcome, now = yield Get(key, self.max_chunk_bytes, writer)
            try:
                data = self._outcome(outcome)
            except UnreadableObjectError as exc:
                # One object that cannot be read (too large, not a regular file, access
                # denied) is a fault at its key; the stream and every other go on.
                out.append(StreamFault(writer, key, exc.reason, str(exc)))
                stream.chunk += 1
                continue
            if data is None:
                return False
            if self.read_ahead and not _is_final(data):
                # The next chunk is fetched while this one is decoded.
                next_key = _keys.chunk_key(self.session, writer, stream.chunk + 1)
                _, now = yield Prefetch(Get(next_key, self.max_chunk_bytes, writer))
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
            self.heard[writer] = now
            self._deliver(writer, key, stream, chunk, out)
            if chunk.header.final:
                stream.closed = True
                yield from self._after_final(writer, stream, out)
        return False

    def _deliver(self, writer: str, key: str, stream: _Stream, chunk: Any, out: list[Item]) -> None:
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
        start = len(out)
        if chunk.unknown_fields is None and not chunk.bad:
            first = header.first
            out.extend(
                [Event(writer, first + i, number, messages[i]) for i in range(skip, len(messages))]
            )
        else:
            self._deliver_each(writer, key, number, chunk, skip, out)
        if self.expect_opened and len(out) > start and stream.seq == 0 and skip == 0:
            head = out[start]
            if type(head) is Event and type(head.message) is not Opened:
                out.insert(start, _rule_fault(writer, key, "its first message is not `opened`"))
        for item in reversed(out[start:]):
            if type(item) is Event:
                stream.last = item
                break
        stream.seq = max(stream.seq, header.first + len(messages))
        stream.chunk += 1
        if header.final:
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

    def _after_final(self, writer: str, stream: _Stream, out: list[Item]) -> Pass:
        """Nothing may follow a final chunk: one look at the next key says so if it does."""
        key = _keys.chunk_key(self.session, writer, stream.chunk)
        outcome, _ = yield Get(key, 0)
        try:
            data = self._outcome(outcome)
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

    def _scan(self, writer: str, stream: _Stream, out: list[Item], now: float) -> Pass:
        """List a stream past its cursor: report strangers, and skip a missing chunk."""
        prefix = _keys.stream_prefix(self.session, writer)
        after = f"{stream.chunk - 1:020d}" if stream.chunk > 0 else None
        outcome, now = yield List(prefix, after)
        try:
            names = self._outcome(outcome)
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
        yield from self._drain(writer, stream, out, None, now)
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
            yield from self._drain(writer, stream, out, None, now)


def run(pass_: Pass, perform: Callable[[Request], Any], clock: Callable[[], float]) -> Any:
    """Drive a pass with blocking I/O: ``perform`` answers each request (it may raise)."""
    try:
        request = next(pass_)
        while True:
            try:
                outcome: Any = perform(request)
            except Exception as exc:  # the core decides what each failure means
                outcome = exc
            request = pass_.send((outcome, clock()))
    except StopIteration as stop:
        return stop.value
