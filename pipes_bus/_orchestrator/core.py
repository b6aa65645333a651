"""A session's follower, without I/O: what it heard, and when the session is complete.

:meth:`SessionCore.follow` is a generator of actions (:class:`Poll` the session, :class:`Scan`
it for gaps, :class:`Wait` a while, :class:`Hand` a batch to the caller), sent back each
action's outcome with the time, ``(outcome, now)``. The blocking
:class:`~pipes_bus.orchestrator.Session` and the asyncio
:class:`~pipes_bus.orchestrator.AsyncSession` carry the actions out, each with its own I/O,
so the completion rules (grace, settle, writers known to be gone) are written once.
"""

from __future__ import annotations

import collections
import operator
import os
import socket
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from pipes_bus._log.core import ReaderCore
from pipes_bus._log.items import Event, Item, SessionCursor, split_custom
from pipes_bus._orchestrator.result import SessionResult, WriterState
from pipes_bus._orchestrator.sources import MessageSource
from pipes_bus._wire.schema import (
    Check,
    Closed,
    Log,
    Materialization,
    Opened,
    Output,
    Progress,
    UnknownMessage,
)

__all__ = ["DEFAULT_SETTLE", "Hand", "Poll", "Scan", "SessionCore", "Verify", "Wait"]

# After the launched work exits, the session lists its writers once more this much later:
# a writer that opens just after the exit (a detached child) is followed too.
DEFAULT_SETTLE = 0.25
# Faults a checkpoint keeps (the first ones); one is enough to decide the exit status.
MAX_KEPT_FAULTS = 1000
# However long the reader and the sources would sleep, the launched work is looked at
# this often.
_LOOK_AT_WORK = 1.0


class Poll(NamedTuple):
    """Read what is there now: the reader's due probes (all of them with ``discover``) and
    every active source. The outcome is the batch."""

    discover: bool | None = None


class Scan(NamedTuple):
    """List every open stream for gaps, then poll everything. The outcome is the batch."""


class Verify(NamedTuple):
    """Before ``writers`` are declared lost: probe their streams and read the beats feed
    again. The outcome is the batch."""

    writers: list[str]


class Wait(NamedTuple):
    """Sleep ``seconds`` (or less, if woken)."""

    seconds: float


class Hand(NamedTuple):
    """Give ``batch`` to the caller; it is recorded already."""

    batch: list[Item]


Action = Poll | Scan | Verify | Wait | Hand
Follow = Generator[Action, tuple[Any, float], None]
_writer_of = operator.attrgetter("writer")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SessionCore:
    """The state of one followed session: its reader's, its sources', and its result."""

    def __init__(
        self,
        session: str,
        bus: str,
        reader: ReaderCore,
        *,
        sources: Sequence[MessageSource] = (),
        collect: bool = True,
        cursor: SessionCursor | None = None,
        pid_alive: Callable[[int], bool] = _pid_alive,
        host: str | None = None,
        liveness: float | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.liveness = liveness
        self._wall = wall
        self.sources = list(sources)
        self.collect = collect
        self.result = SessionResult(session=session, bus=bus)
        self.cursor = cursor or SessionCursor(session)
        self.callbacks: list[Callable[[Item], None]] = []
        self.last_in_batch: dict[str, Event] = {}
        self._pid_alive = pid_alive
        self._host = host or socket.gethostname()
        self._started = 0.0
        if cursor is not None:
            # What the follower before this one knew: it ends with the same status.
            for writer, summary in cursor.writers.items():
                self.result.writers[writer] = WriterState.from_summary(writer, summary)
            self.result.faults = list(cursor.faults)
            self.result.counts = dict(cursor.counts)

    # --- state ------------------------------------------------------------------------------

    @property
    def writers(self) -> list[str]:
        """Every writer heard so far, from the session's streams and every other source."""
        return self.reader.writers + [w for s in self.sources for w in s.writers]

    @property
    def open_writers(self) -> list[str]:
        """Writers heard from that have not closed, from every source."""
        return self.reader.open_writers + [w for s in self.sources for w in s.open_writers]

    @property
    def running_writers(self) -> list[str]:
        """Open writers not known to be gone: neither lost nor of a process that died."""
        return [w for w in self.open_writers if not self._gone(w)]

    def allowed_silence(self, writer: str) -> float | None:
        """How long ``writer`` may stay unheard before it is lost (None: no limit).

        The session's ``liveness`` if set, else three of the writer's announced heartbeats
        and two looks at the beats feed: never less than a quiet, alive writer can stay.
        """
        state = self.result.writers.get(writer)
        heartbeat = state.heartbeat if state is not None else None
        if self.liveness is not None:
            return max(self.liveness, heartbeat or 0.0)
        if heartbeat is None:
            return None
        return 3 * heartbeat + 2 * self.reader.feed_every() + 5.0

    def _silent(self, now: float) -> list[str]:
        """Open writers of the session's own streams heard from longer ago than allowed."""
        silent = []
        for writer in self.reader.open_writers:
            state = self.result.writers.get(writer)
            limit = self.allowed_silence(writer)
            if limit is None or state is None or state.lost:
                continue
            heard = self.reader.heard.get(writer, self._started)
            if now - heard > limit:
                silent.append(writer)
        return silent

    def _note_heard(self, now: float) -> None:
        wall = self._wall()
        for writer, heard in self.reader.heard.items():
            state = self.result.writers.get(writer)
            if state is not None:
                state.last_heard = wall - (now - heard)
                state.beats = self.reader.beat_counts.get(writer, 0)
                if state.lost and now - heard <= (self.allowed_silence(writer) or 0):
                    state.lost, state.lost_at = False, None  # heard again: not lost after all

    def active_sources(self) -> list[MessageSource]:
        """The sources to poll now: woken by their claimed entry, or active by themselves."""
        for source in self.sources:
            if source.claims is not None and source.claims in self.reader.claimed:
                source.wake()
        return [s for s in self.sources if s.active]

    def wait_time(self, now: float) -> float:
        """Seconds until the reader or an active source wants to look again."""
        waits = [self.reader.wait_time(now), _LOOK_AT_WORK]
        waits += [s.wait_time() for s in self.sources if s.active]
        return min(waits)

    def checkpoint(self) -> SessionCursor:
        """The cursor to save: just past everything handed out, with what was learnt."""
        return SessionCursor(
            self.cursor.session,
            self.cursor.streams,
            {w: state.summary() for w, state in self.result.writers.items()},
            self.result.faults[:MAX_KEPT_FAULTS],
            dict(self.result.counts),
        )

    def _gone(self, writer: str) -> bool:
        state = self.result.writers.get(writer)
        if state is None:
            return False
        if state.lost:
            return True
        return state.host == self._host and state.pid is not None and not self._pid_alive(state.pid)

    # --- following --------------------------------------------------------------------------

    def follow(
        self, done: Callable[[], bool] | None, grace: float, settle: float, now: float
    ) -> Follow:
        """Follow the session until it is complete (see the docs' Completion section)."""
        finished_at: float | None = None  # when the work ended, then the last progress
        exited_at = now
        self._started = now
        wall = self._wall()
        for writer, state in self.result.writers.items():
            if state.last_heard is not None and writer not in self.reader.heard:
                # Heard by the follower before this one: silence counts from then.
                self.reader.heard[writer] = now - max(0.0, wall - state.last_heard)
        settled = settle <= 0
        while True:
            batch, now = yield Poll()
            changed = False  # a writer's state changed with no message (it was lost)
            if batch:
                self.record(batch)  # heartbeat intervals and pids, before liveness is judged
            self._note_heard(now)
            silent = self._silent(now)
            if silent:
                # Not heard from for too long: one closer look before calling them lost.
                more, now = yield Verify(silent)
                batch = batch + self.record(more)
                self._note_heard(now)
                for writer in self._silent(now):
                    state = self.state(writer)
                    state.lost, state.lost_at = True, self._wall()
                    changed = True
            finished = (
                done() if done is not None else bool(self.writers) and not self.running_writers
            )
            if finished and finished_at is None:
                finished_at = exited_at = now
                # Everything that opened before the exit is visible now.
                more, now = yield Poll(discover=True)
                batch = batch + self.record(more)
            if batch or changed:
                now = yield from self._hand(batch)
                if finished_at is not None:
                    finished_at = now  # grace counts from the last progress
            wait_cap = _LOOK_AT_WORK
            if finished:
                assert finished_at is not None
                still_open = self.open_writers
                if not still_open:
                    if settled:
                        break
                    # A writer may open just after the work exits (a detached child, a
                    # late rank): look for writers once more, `settle` after the exit.
                    left = exited_at + settle - now
                    if left > 0:
                        _, now = yield Wait(left)
                        continue
                    settled = True
                    late, now = yield Poll(discover=True)
                    if late:
                        now = yield from self._hand(self.record(late))
                    if not self.open_writers:
                        break
                    finished_at = now
                    continue
                if not batch and all(self._gone(w) for w in still_open):
                    # Their processes are gone: one last look for gaps, then stop waiting.
                    last, now = yield Scan()
                    if last:
                        now = yield from self._hand(self.record(last))
                    if not [w for w in self.open_writers if not self._gone(w)]:
                        break
                if now - finished_at >= grace:
                    last, now = yield Scan()
                    if last:
                        now = yield from self._hand(self.record(last))
                    break
                wait_cap = max(0.0, finished_at + grace - now)
            if not self.reader.behind:
                _, now = yield Wait(min(self.wait_time(now), wait_cap))

    def _hand(self, batch: list[Item]) -> Generator[Action, tuple[Any, float], float]:
        _, now = yield Hand(batch)
        self.last_in_batch = {}  # what the caller may mark consumed: this batch's only
        return now

    # --- recording --------------------------------------------------------------------------

    def state(self, writer: str) -> WriterState:
        """What the result knows of ``writer`` (made on first mention)."""
        state = self.result.writers.get(writer)
        if state is None:
            state = self.result.writers[writer] = WriterState(writer)
        return state

    def record(self, batch: list[Item]) -> list[Item]:
        """Add a batch to the result and tell the callbacks; return it."""
        # Hot path: a worker may send millions of custom messages; count them in bulk.
        result = self.result
        customs, others = split_custom(batch)
        if customs:
            result.counts["custom"] = result.counts.get("custom", 0) + len(customs)
            if self.collect:
                result.custom_messages.extend(customs)
        for item in others:
            if type(item) is Event:
                self._record(item)
            else:
                result.faults.append(item)  # type: ignore[arg-type]
        if self.callbacks:
            for item in batch:
                for callback in self.callbacks:
                    callback(item)
        events = customs if not others else [i for i in batch if isinstance(i, Event)]
        writers = list(map(_writer_of, events))
        last = dict(zip(writers, events, strict=True))  # the last event of each writer
        if len(last) == 1:
            (writer,) = last
            self.state(writer).messages += len(events)
        else:
            for writer, n in collections.Counter(writers).items():
                self.state(writer).messages += n
        for writer, event in last.items():
            self.state(writer).last = event
        self.last_in_batch.update(last)  # until the batch is handed over
        return batch

    def _record(self, item: Event) -> None:
        result = self.result
        message = item.message
        kind = type(message)
        name = str(message.kind if kind is UnknownMessage else kind.__struct_config__.tag)  # type: ignore[union-attr]
        result.counts[name] = result.counts.get(name, 0) + 1
        if kind is Log:
            result.logs.append(item)
        elif kind is Materialization:
            result.materializations.append(item)
        elif kind is Check:
            result.checks.append(item)
        elif kind is Progress:
            self.state(item.writer).progress = message  # type: ignore[assignment]
        elif kind is Output:
            if self.collect:
                result.outputs.append(item)
        elif kind is Opened:
            info = message.info  # type: ignore[union-attr]
            state = self.state(item.writer)
            state.opened = True
            state.label, state.pid, state.host = info.label, info.pid, info.host
            state.heartbeat = message.heartbeat  # type: ignore[union-attr]
        elif kind is Closed:
            state = self.state(item.writer)
            state.closed = True
            state.exception = message.exception  # type: ignore[union-attr]
        elif kind is UnknownMessage:
            result.unknown.append(item)


def advance_all(cursor: SessionCursor, batch: list[Item]) -> None:
    """Mark every event of ``batch`` consumed in ``cursor``."""
    advance = cursor.advance
    for item in batch:
        if type(item) is Event:
            advance(item)
