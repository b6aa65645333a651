"""The orchestrator side: sessions, context injectors, and the session result."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import operator
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from pipes_bus._errors import ConfigurationError
from pipes_bus._log.items import Event, SessionCursor, StreamFault, WriterSummary, split_custom
from pipes_bus._log.reader import SessionReader
from pipes_bus._log.schedule import Schedule
from pipes_bus._redact import public_options
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.bootstrap import (
    ARGV_FLAG,
    CONTEXT_ENV,
    KEY_ENV,
    SESSION_ENV,
    Context,
    SessionParams,
    encode_context,
    encode_params,
    make_context,
)
from pipes_bus._wire.schema import (
    PROTOCOL_VERSION,
    Check,
    Closed,
    ExceptionInfo,
    Log,
    Materialization,
    Opened,
    Output,
    Progress,
    UnknownMessage,
)
from pipes_bus.transports import Transport, open_transport

__all__ = [
    "ArgvContextInjector",
    "AutoContextInjector",
    "ContextInjector",
    "EnvContextInjector",
    "Injection",
    "MessageSource",
    "ObjectContextInjector",
    "Session",
    "SessionResult",
    "WriterState",
    "default_bus_url",
    "open_session",
]

BUS_ENV = "PIPES_BUS_URL"
# Exit statuses of a session whose command itself exited 0 (see `pipes-bus run --help`).
EXIT_WORKER_FAILED = 3
EXIT_INCOMPLETE = 4
EXIT_UNDELIVERABLE = 5
EXIT_BUS = 6
# After the launched work exits, the session lists its writers once more this much later:
# a writer that opens just after the exit (a detached child) is followed too.
DEFAULT_SETTLE = 0.25
# Faults a checkpoint keeps (the first ones); one is enough to decide the exit status.
MAX_KEPT_FAULTS = 1000


def default_bus_url() -> str:
    """$PIPES_BUS_URL, else a local directory in the user's cache: nothing to configure."""
    url = os.environ.get(BUS_ENV)
    if url:
        return url
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "pipes-bus", "bus")


# --- context injection (orchestrator side); loaders are in _context ----------------------


@dataclass(frozen=True)
class Injection:
    """Where an injector put the context: the loader's ``source``, plus env and args to add."""

    source: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


class ContextInjector:
    """Puts a context where the matching worker-side loader will find it."""

    via: ClassVar[str] = ""

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        """Place ``context`` for ``session`` and say where it is."""
        raise NotImplementedError


class EnvContextInjector(ContextInjector):
    """Inline in ``PIPES_BUS_CONTEXT``, compressed. For contexts up to ``max_bytes``."""

    via = "env"

    def __init__(self, max_bytes: int = 96 * 1024) -> None:
        self.max_bytes = max_bytes

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        text = encode_context(context)
        if len(text) > self.max_bytes:
            raise ConfigurationError(
                f"The context encodes to {len(text)} bytes, over the {self.max_bytes}-byte limit "
                "for an environment variable. Use ObjectContextInjector (or the default, auto)."
            )
        return Injection({"via": "env", "env": CONTEXT_ENV}, env={CONTEXT_ENV: text})


class ObjectContextInjector(ContextInjector):
    """As ``{session}/context.json`` on the bus; only its key travels in the environment."""

    via = "object"

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        key = f"{session}/context.json"
        data = msgspec.json.encode(context)
        if not transport.put_if_absent(key, data) and transport.get(key) != data:
            raise ConfigurationError(f"{transport.describe(key)} already holds another context.")
        # The digest travels in the environment, which only the orchestrator writes:
        # anyone who can write to the bucket still cannot swap the context.
        digest = hashlib.sha256(data).hexdigest()
        return Injection({"via": "object", "key": key, "max_size": len(data), "sha256": digest})


class ArgvContextInjector(ContextInjector):
    """As a ``--pipes-bus-context=...`` argument appended to the command."""

    via = "argv"

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        return Injection(
            {"via": "argv", "flag": ARGV_FLAG}, args=[f"{ARGV_FLAG}={encode_context(context)}"]
        )


class AutoContextInjector(ContextInjector):
    """Inline in the environment when small, else an object in the session (the default)."""

    via = "auto"

    def __init__(self, inline_limit: int = 16 * 1024) -> None:
        self.inline_limit = inline_limit

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        if len(encode_context(context)) <= self.inline_limit:
            return EnvContextInjector(self.inline_limit).inject(context, transport, session)
        return ObjectContextInjector().inject(context, transport, session)


_writer_of = operator.attrgetter("writer")

_INJECTORS: dict[str, Callable[[], ContextInjector]] = {
    "auto": AutoContextInjector,
    "env": EnvContextInjector,
    "object": ObjectContextInjector,
    "argv": ArgvContextInjector,
}

# --- result ---------------------------------------------------------------------------------


@dataclass
class WriterState:
    """What the session knows about one writer."""

    id: str
    label: str | None = None
    pid: int | None = None
    host: str | None = None
    opened: bool = False
    closed: bool = False
    exception: ExceptionInfo | None = None
    messages: int = 0
    last: Event | None = None
    progress: Progress | None = None
    #: The seq and kind of the last delivered message (kept when ``last`` is not, across a
    #: follower's restart).
    last_seq: int | None = None
    last_kind: str | None = None

    @property
    def name(self) -> str:
        """The label if there is one, else the id."""
        return f"{self.label} ({self.id})" if self.label else self.id

    def last_message_text(self) -> str:
        """A short description of the last delivered message."""
        if self.last is not None:
            self.last_seq, self.last_kind = self.last.seq, _kind_of(self.last.message)
        if self.last_seq is None:
            return "nothing was delivered"
        return f"its last delivered message was #{self.last_seq} ({self.last_kind})"

    def summary(self) -> WriterSummary:
        """This state in the form a cursor keeps."""
        self.last_message_text()
        return WriterSummary(
            **{name: getattr(self, name) for name in WriterSummary.__struct_fields__}
        )

    @classmethod
    def from_summary(cls, writer: str, summary: WriterSummary) -> WriterState:
        """The state a cursor kept of ``writer``."""
        return cls(writer, **msgspec.structs.asdict(summary))


def _kind_of(message: Any) -> str:
    return (
        str(message.kind) if isinstance(message, UnknownMessage) else type(message).__name__.lower()
    )


@dataclass
class SessionResult:
    """Everything a session heard, and whether anything went wrong."""

    session: str
    bus: str
    exit_code: int | None = None
    writers: dict[str, WriterState] = field(default_factory=dict)
    materializations: list[Event] = field(default_factory=list)
    checks: list[Event] = field(default_factory=list)
    custom_messages: list[Event] = field(default_factory=list)
    logs: list[Event] = field(default_factory=list)
    outputs: list[Event] = field(default_factory=list)
    unknown: list[Event] = field(default_factory=list)
    faults: list[StreamFault] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)
    diagnostics: str = ""
    #: Why the bus could not be read to the end, if it could not.
    bus_error: str | None = None
    #: Why the launched command was asked to stop ("pipes-bus passed on an interrupt"), if it was.
    stopped: str | None = None

    @property
    def incomplete(self) -> list[WriterState]:
        """Writers that opened but never closed."""
        return [w for w in self.writers.values() if not w.closed]

    @property
    def failed(self) -> list[WriterState]:
        """Writers that closed with an exception."""
        return [w for w in self.writers.values() if w.closed and w.exception is not None]

    @property
    def ok(self) -> bool:
        """True only if the command exited 0, every writer closed cleanly, nothing was lost."""
        return self.exit_status() == 0

    def problems(self) -> list[str]:
        """One sentence per problem, most important first."""
        lines: list[str] = []
        after = f" after {self.stopped}" if self.stopped else ""
        if self.exit_code is not None and self.exit_code < 0:
            lines.append(f"the command was killed by {_signal_name(-self.exit_code)}{after}")
        elif self.exit_code not in (None, 0):
            lines.append(f"the command exited with status {self.exit_code}{after}")
        if self.bus_error is not None:
            lines.append(f"the bus could not be read to the end: {self.bus_error}")
        for w in self.failed:
            assert w.exception is not None
            lines.append(f"writer {w.name} failed: {w.exception.type}: {w.exception.message}")
        for w in self.incomplete:
            lines.append(f"writer {w.name} never closed; {w.last_message_text()}")
        for fault in self.faults:
            lines.append(f"undeliverable data: {fault}")
        return lines

    def reason(self) -> str | None:
        """A one-line reason the session did not succeed, or None."""
        problems = self.problems()
        if not problems:
            return None
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0] + more

    def exit_status(self) -> int:
        """The documented exit status: the command's, else 3/4/5 for worker problems."""
        if self.exit_code not in (None, 0):
            assert self.exit_code is not None
            return self.exit_code if self.exit_code > 0 else 128 - self.exit_code
        if self.bus_error is not None:
            return EXIT_BUS
        if self.failed:
            return EXIT_WORKER_FAILED
        if self.incomplete:
            return EXIT_INCOMPLETE
        if self.faults:
            return EXIT_UNDELIVERABLE
        return 0


# --- session --------------------------------------------------------------------------------


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class MessageSource:
    """Another place a session hears from, beside its own streams (e.g. Dagster Pipes).

    A source adds variables to the launch environment, and turns whatever its workers
    write into :class:`Event` and :class:`StreamFault` items with writer ids of its own.
    """

    def env(self) -> dict[str, str]:
        """Variables to add to the worker's environment."""
        return {}

    def poll(self, *, final: bool = False) -> list[Event | StreamFault]:
        """Everything available now. ``final`` is set on the passes after the work exited."""
        raise NotImplementedError

    def wait_time(self) -> float:
        """Seconds until this source wants to be polled again."""
        return 1.0

    @property
    def writers(self) -> list[str]:
        """Every writer this source has seen."""
        return []

    @property
    def open_writers(self) -> list[str]:
        """Writers this source has seen open but not close."""
        return []

    def close(self) -> None:
        """Release resources."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Session:
    """One run of work: the environment to launch it with, its live events, its result.

    Create with :func:`open_session`. Launch the work with ``session.env`` added to its
    environment (and ``session.args`` appended to its command), then iterate
    :meth:`follow` or call :meth:`wait`.
    """

    def __init__(
        self,
        bus: str | None = None,
        *,
        context: Context | Mapping[str, Any] | None = None,
        storage_options: Mapping[str, Any] | None = None,
        injector: ContextInjector | str = "auto",
        session_id: str | None = None,
        capture_output: bool = False,
        writer_settings: Mapping[str, Any] | None = None,
        sign: bool = False,
        collect: bool = True,
        grace: float = 10.0,
        settle: float = DEFAULT_SETTLE,
        poll: Schedule | None = None,
        transport: Transport | None = None,
        sources: Sequence[MessageSource] = (),
        dagster: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bus is None:
            bus = transport.url if transport is not None else default_bus_url()
        elif not bus.strip():
            raise ConfigurationError(
                "The bus URL is empty; give a directory or a URL like s3://bucket/prefix, "
                f"or leave it out for the default bus ({default_bus_url()})."
            )
        elif transport is not None and bus != transport.url:
            raise ConfigurationError(
                f"The bus {bus!r} is not the transport's location {transport.url!r}: the "
                "worker would be told one place and the session would read another."
            )
        self.bus = bus
        options = dict(storage_options or {})
        self.transport = transport or open_transport(self.bus, **options)
        self.id = _keys.validate_id("session id", session_id) if session_id else _keys.new_id("s")
        self.context = make_context(context)
        if not self.context.run_id:
            self.context = msgspec.structs.replace(self.context, run_id=self.id)
        # The session's first write, before anything is launched: a bus that cannot be
        # written (read-only, missing bucket, denied credentials) fails here, naming it.
        self.transport.put_if_absent(
            _keys.manifest_key(self.id),
            msgspec.json.encode(
                {
                    "format": "pipes-bus-session",
                    "protocol": PROTOCOL_VERSION,
                    "session": self.id,
                    "created": time.time(),
                    "context_sha256": hashlib.sha256(msgspec.json.encode(self.context)).hexdigest(),
                    "signed": sign,
                }
            ),
        )
        chosen = _INJECTORS[injector]() if isinstance(injector, str) else injector
        self.injection = chosen.inject(self.context, self.transport, self.id)
        self.key = secrets.token_bytes(32) if sign else None
        worker_options, self.withheld_options = public_options(options)
        params = SessionParams(
            bus=self.bus,
            session=self.id,
            storage_options=worker_options,
            context=self.injection.source,
            writer=dict(writer_settings or {}),
            capture_output=capture_output,
            signed=sign,
        )
        self.env: dict[str, str] = {SESSION_ENV: encode_params(params), **self.injection.env}
        if self.key is not None:
            self.env[KEY_ENV] = self.key.hex()
        self.sources: list[MessageSource] = list(sources)
        if dagster:
            # Unmodified Dagster Pipes workers report into the session too. (Imported here:
            # _dagster imports this module.)
            from pipes_bus.integrations.dagster._interop import DagsterPipesSource, dagster_source

            if not any(isinstance(s, DagsterPipesSource) for s in self.sources):
                self.sources.insert(
                    0,
                    dagster_source(
                        self.transport,
                        self.id,
                        context=self.context,
                        include_stdio=capture_output,
                        trusted=not sign,
                        clock=clock,
                    ),
                )
        for source in self.sources:
            self.env.update(source.env())
        self.args: list[str] = list(self.injection.args)
        self._follow_setup(None, grace, collect, poll, sleep, clock)
        self.settle = settle

    def _follow_setup(
        self,
        cursor: SessionCursor | None,
        grace: float,
        collect: bool,
        poll: Schedule | None,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.grace = grace
        self.collect = collect
        self.reader = SessionReader(
            self.transport,
            self.id,
            key=self.key,
            cursor=cursor,
            schedule=poll,
            expect_opened=True,
            clock=clock,
        )
        self.cursor = cursor or SessionCursor(self.id)
        self.result = SessionResult(session=self.id, bus=self.bus)
        self._callbacks: list[Callable[[Event | StreamFault], None]] = []
        self._last_in_batch: dict[str, Event] = {}
        self._poll = poll
        self._sleep = sleep
        self._clock = clock
        self._host = socket.gethostname()

    @classmethod
    def attach(
        cls,
        transport: Transport,
        session_id: str,
        *,
        cursor: SessionCursor | None = None,
        key: bytes | None = None,
        collect: bool = True,
        grace: float = 10.0,
        poll: Schedule | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Session:
        """Follow a session that is already running (e.g. after an orchestrator restart).

        With ``cursor``, it resumes just past what was consumed before: nothing is
        delivered twice and nothing is skipped.
        """
        self = cls.__new__(cls)
        self.bus = transport.url
        self.transport = transport
        self.id = _keys.validate_id("session id", session_id)
        self.context = Context()
        self.injection = Injection({})
        self.withheld_options = []
        self.key = key
        self.env = {}
        self.args = []
        from pipes_bus.integrations.dagster._interop import dagster_source

        self.sources = [
            dagster_source(
                transport, self.id, inject=False, cursor=cursor, trusted=key is None, clock=clock
            )
        ]
        self._follow_setup(cursor, grace, collect, poll, sleep, clock)
        self.settle = 0.0
        if cursor is not None:
            # What the follower before this one knew: it ends with the same status.
            result = self.result
            for writer, summary in cursor.writers.items():
                result.writers[writer] = WriterState.from_summary(writer, summary)
            result.faults = list(cursor.faults)
            result.counts = dict(cursor.counts)
        return self

    def __repr__(self) -> str:
        return f"<Session {self.id} on {self.bus}>"

    @property
    def url(self) -> str:
        """The session's location: bus URL plus session id."""
        return self.transport.describe(self.id)

    def checkpoint(self) -> SessionCursor:
        """The cursor to save: the position just past everything handed out, and what was
        learnt on the way (writers, faults, counts). :meth:`attach` resumes from it."""
        cursor = self.cursor
        return SessionCursor(
            cursor.session,
            cursor.streams,
            {w: state.summary() for w, state in self.result.writers.items()},
            self.result.faults[:MAX_KEPT_FAULTS],
            dict(self.result.counts),
        )

    def on_event(self, callback: Callable[[Event | StreamFault], None]) -> None:
        """Call ``callback`` with every event and fault as it arrives."""
        self._callbacks.append(callback)

    def follow(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> Iterator[Event | StreamFault]:
        """Yield events live until the session is complete.

        Complete means ``done()`` is true (the launched work has exited) and every writer
        that opened has closed. With ``done=None`` it means at least one writer opened and
        all have closed. Writers still open once ``done()`` is true get ``grace`` seconds
        (writers whose process is known to be gone get none), then are named in
        ``result.incomplete`` with their last delivered message. ``self.cursor`` includes
        each item from the moment it is yielded: save it after handling the item, and a
        restarted orchestrator (:meth:`attach`) neither repeats nor skips anything.
        """
        advance = self.cursor.advance
        for batch in self._batches(done, grace, settle):
            for item in batch:
                if type(item) is Event:
                    advance(item)
                yield item

    def batches(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> Iterator[list[Event | StreamFault]]:
        """Like :meth:`follow`, one poll's worth at a time (for callers that write in bulk)."""
        advance = self.cursor.advance
        for batch in self._batches(done, grace, settle):
            for event in self._last_in_batch.values():
                advance(event)
            yield batch

    def _batches(
        self, done: Callable[[], bool] | None, grace: float | None, settle: float | None = None
    ) -> Iterator[list[Event | StreamFault]]:
        grace = self.grace if grace is None else grace
        settle = self.settle if settle is None else settle
        finished_at: float | None = None  # when the work ended, then the last progress
        settled = settle <= 0
        while True:
            batch = self._poll_all()
            finished = done() if done is not None else bool(self.writers) and not self.open_writers
            if finished and finished_at is None:
                finished_at = exited_at = self._clock()
                # Everything that opened before the exit is visible now.
                batch += self._poll_all(discover=True)
            if batch:
                yield self._record_all(batch)
                if finished_at is not None:
                    finished_at = self._clock()  # grace counts from the last progress
            wait_cap = 1.0
            if finished:
                assert finished_at is not None
                still_open = self.open_writers
                if not still_open:
                    if settled:
                        break
                    # A writer may open just after the work exits (a detached child, a
                    # late rank): look for writers once more, `settle` after the exit.
                    left = exited_at + settle - self._clock()
                    if left > 0:
                        self._sleep(left)
                        continue
                    settled = True
                    late = self._poll_all(discover=True)
                    if late:
                        yield self._record_all(late)
                    if not self.open_writers:
                        break
                    finished_at = self._clock()
                    continue
                if not batch and all(self._gone(w) for w in still_open):
                    # Their processes are gone: one last look for gaps, then stop waiting.
                    last = self._scan_all()
                    if last:
                        yield self._record_all(last)
                    if not [w for w in self.open_writers if not self._gone(w)]:
                        break
                if self._clock() - finished_at >= grace:
                    last = self._scan_all()
                    if last:
                        yield self._record_all(last)
                    break
                wait_cap = max(0.0, finished_at + grace - self._clock())
            if not self.reader.behind:
                # The reader knows when its next probe is due; still look at the
                # launched work (and other sources) at least every second.
                waits = [self.reader.wait_time(), *(s.wait_time() for s in self.sources), 1.0]
                self._sleep(min(*waits, wait_cap))
        self._finish()

    def wait(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> SessionResult:
        """Follow the session to completion and return its result."""
        for _ in self.follow(done=done, grace=grace, settle=settle):
            pass
        return self.result

    def diagnose(self) -> str:
        """What was injected, where the reader looked, and what it found there."""
        lines = [
            f"session {self.id} on {self.bus}",
            f"injected: {SESSION_ENV} ({len(self.env.get(SESSION_ENV, ''))} chars)"
            + "".join(
                f", {k} ({len(v)} chars)"
                for k, v in self.env.items()
                if k != SESSION_ENV and k != KEY_ENV
            )
            + (
                f", args {' '.join(a.split('=')[0] + '=...' for a in self.args)}"
                if self.args
                else ""
            )
            + f"; context via {self.injection.source.get('via')}",
            f"looked in: {self.transport.describe(_keys.streams_prefix(self.id))}/",
        ]
        if self.withheld_options:
            lines.append(
                "storage options not handed to the worker: "
                f"{', '.join(self.withheld_options)} (they may be secrets; give the worker "
                "its own, e.g. in its environment)"
            )
        try:
            entries = self.transport.list(self.id)
            streams = self.transport.list(_keys.streams_prefix(self.id))
        except Exception as exc:
            lines.append(f"could not list it: {exc}")
        else:
            lines.append(
                f"found: {len(streams)} writer stream(s)"
                + (
                    f" ({', '.join(streams[:5])}{', ...' if len(streams) > 5 else ''})"
                    if streams
                    else ""
                )
                + f"; session entries: {', '.join(entries) or 'none'}"
            )
            if not streams:
                lines.append(
                    "hint: the command never called pipes_bus.open_worker(), or it could not "
                    f"reach {self.bus} (check that it sees the same location and has "
                    f"{SESSION_ENV} in its environment)."
                )
        if self.reader.last_error is not None:
            lines.append(f"last store error: {self.reader.last_error}")
        return "\n".join(lines)

    def close(self) -> None:
        """Release the transport and any extra sources."""
        for source in self.sources:
            source.close()
        self.transport.close()

    # --- internals -------------------------------------------------------------------------

    def _poll_all(self, *, discover: bool | None = None) -> list[Event | StreamFault]:
        batch = self.reader.poll(discover=discover, due_only=True)
        for source in self.sources:
            batch += source.poll(final=bool(discover))
        return batch

    def _scan_all(self) -> list[Event | StreamFault]:
        return self.reader.scan() + self._poll_all(discover=True)

    @property
    def writers(self) -> list[str]:
        """Every writer heard so far, from the session's streams and every other source."""
        return self.reader.writers + [w for s in self.sources for w in s.writers]

    @property
    def open_writers(self) -> list[str]:
        """Writers heard from that have not closed, from every source."""
        return self.reader.open_writers + [w for s in self.sources for w in s.open_writers]

    def _gone(self, writer: str) -> bool:
        state = self.result.writers.get(writer)
        return (
            state is not None
            and state.host == self._host
            and state.pid is not None
            and not _pid_alive(state.pid)
        )

    def _state(self, writer: str) -> WriterState:
        state = self.result.writers.get(writer)
        if state is None:
            state = self.result.writers[writer] = WriterState(writer)
        return state

    def _record_all(self, batch: list[Event | StreamFault]) -> list[Event | StreamFault]:
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
        if self._callbacks:
            for item in batch:
                for callback in self._callbacks:
                    callback(item)
        events = customs if not others else [i for i in batch if isinstance(i, Event)]
        writers = list(map(_writer_of, events))
        last = dict(zip(writers, events, strict=True))  # the last event of each writer
        if len(last) == 1:
            (writer,) = last
            self._state(writer).messages += len(events)
        else:
            for writer, n in collections.Counter(writers).items():
                self._state(writer).messages += n
        for writer, event in last.items():
            self._state(writer).last = event
        self._last_in_batch = last
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
            self._state(item.writer).progress = message  # type: ignore[assignment]
        elif kind is Output:
            if self.collect:
                result.outputs.append(item)
        elif kind is Opened:
            info = message.info  # type: ignore[union-attr]
            state = self._state(item.writer)
            state.opened = True
            state.label, state.pid, state.host = info.label, info.pid, info.host
        elif kind is Closed:
            state = self._state(item.writer)
            state.closed = True
            state.exception = message.exception  # type: ignore[union-attr]
        elif kind is UnknownMessage:
            result.unknown.append(item)

    def _finish(self) -> None:
        self.result.requests = self.transport.stats.snapshot()
        if not self.result.writers:
            self.result.diagnostics = self.diagnose()


@contextlib.contextmanager
def open_session(bus: str | None = None, **options: Any) -> Iterator[Session]:
    """Open a session on ``bus`` (default: $PIPES_BUS_URL or a local directory).

    Options are those of :class:`Session`: context, storage_options, injector
    ("auto", "env", "object", "argv" or a ContextInjector), session_id, capture_output,
    writer_settings, sign, collect, grace.
    """
    session = Session(bus, **options)
    try:
        yield session
    finally:
        session.close()
