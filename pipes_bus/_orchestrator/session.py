"""Sessions: the blocking :class:`Session`, its configuration, and what opening one does.

Making a :class:`Session` only configures it; :meth:`Session.open` (or entering it, or
first using ``env``, ``args``, ``follow`` or ``wait``) does the I/O: the session's manifest
(its first write, so that a bus that cannot be written fails before anything is launched),
the context injection, and each message source's variables. Following is the
:class:`~pipes_bus._orchestrator.core.SessionCore`'s, with this thread's I/O.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from pipes_bus._errors import ConfigurationError, PipesBusError
from pipes_bus._log.items import Event, Item, SessionCursor, StreamFault
from pipes_bus._log.reader import SessionReader
from pipes_bus._log.schedule import Schedule
from pipes_bus._orchestrator.core import (
    DEFAULT_SETTLE,
    Hand,
    Poll,
    Scan,
    SessionCore,
    Verify,
    Wait,
)
from pipes_bus._orchestrator.injectors import ContextInjector, Injection, injector_for
from pipes_bus._orchestrator.lifecycle import (
    cancel_session,
    command_text,
    read_cancel,
    record_end,
    who,
)
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._orchestrator.sources import MessageSource, SourceSession, make_sources
from pipes_bus._redact import public_options
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.bootstrap import (
    KEY_ENV,
    SESSION_ENV,
    Context,
    SessionParams,
    encode_params,
    make_context,
)
from pipes_bus._wire.control import CancelRequest, Manifest
from pipes_bus._wire.schema import PROTOCOL_VERSION
from pipes_bus.transports import Transport, open_transport

__all__ = ["BUS_ENV", "Session", "default_bus_url", "open_session"]

BUS_ENV = "PIPES_BUS_URL"
_S = TypeVar("_S", bound="_Base")
_log = logging.getLogger("pipes_bus")


def default_bus_url() -> str:
    """$PIPES_BUS_URL, else a local directory in the user's cache: nothing to configure."""
    url = os.environ.get(BUS_ENV)
    if url:
        return url
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "pipes-bus", "bus")


def _bus_url(bus: str | None, transport: Transport | None) -> str:
    if bus is None:
        return transport.url if transport is not None else default_bus_url()
    if not bus.strip():
        raise ConfigurationError(
            "The bus URL is empty; give a directory or a URL like s3://bucket/prefix, "
            f"or leave it out for the default bus ({default_bus_url()})."
        )
    if transport is not None and bus != transport.url:
        raise ConfigurationError(
            f"The bus {bus!r} is not the transport's location {transport.url!r}: the "
            "worker would be told one place and the session would read another."
        )
    return bus


class _Base:
    """What the blocking and the asyncio sessions share: configuration and opening."""

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
        liveness: float | None = None,
        command: Sequence[str] | None = None,
        poll: Schedule | None = None,
        transport: Transport | None = None,
        sources: Sequence[MessageSource] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = _bus_url(bus, transport)
        self.storage_options = dict(storage_options or {})
        self._transport = transport
        self.id = _keys.validate_id("session id", session_id) if session_id else _keys.new_id("s")
        self.context = make_context(context)
        if not self.context.run_id:
            self.context = msgspec.structs.replace(self.context, run_id=self.id)
        self.injector = injector_for(injector)
        self.capture_output = capture_output
        self.writer_settings = dict(writer_settings or {})
        self.sign = sign
        self.collect = collect
        self.grace = grace
        self.settle = settle
        if liveness is not None and not liveness > 0:
            raise ConfigurationError(
                f"liveness must be a number of seconds above 0, not {liveness!r}."
            )
        self.liveness = liveness
        self.command = list(command) if command else None
        self.poll_schedule = poll
        self._sources = None if sources is None else list(sources)
        self._sleep = sleep
        self._clock = clock
        self._attached: tuple[SessionCursor | None, bytes | None] | None = None
        self._opened = False
        self._env: dict[str, str] = {}
        self._args: list[str] = []
        self._key: bytes | None = None
        self._injection = Injection({})
        self._withheld: list[str] = []
        self._made_sources: list[MessageSource] = []
        self._core: SessionCore | None = None
        self._reader: SessionReader | None = None
        self._ended = False  # followed to its end, as the follower of record

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} on {self.bus}>"

    @property
    def transport(self) -> Transport:
        """The transport of the session's bus (opened on first use)."""
        if self._transport is None:
            self._transport = open_transport(self.bus, **self.storage_options)
        return self._transport

    @property
    def url(self) -> str:
        """The session's location: bus URL plus session id."""
        return self.transport.describe(self.id)

    @classmethod
    def _following(
        cls: type[_S],
        transport: Transport,
        session_id: str,
        cursor: SessionCursor | None,
        key: bytes | None,
        **options: Any,
    ) -> _S:
        """A session that follows one already running (what ``attach`` opens)."""
        session = cls(transport=transport, session_id=session_id, settle=0.0, **options)
        session._attached = (cursor, key)
        return session

    # --- opening ------------------------------------------------------------------------------

    def _open_io(self) -> None:
        """Everything opening a session writes and decides, with blocking I/O."""
        if self._attached is not None:
            cursor, self._key = self._attached
            self._make_core(cursor)
            return
        transport = self.transport
        # The session's first write, before anything is launched: a bus that cannot be
        # written (read-only, missing bucket, denied credentials) fails here, naming it.
        transport.put_if_absent(_keys.manifest_key(self.id), self._manifest())
        self._injection = self.injector.inject(self.context, transport, self.id)
        self._key = secrets.token_bytes(32) if self.sign else None
        worker_options, self._withheld = public_options(self.storage_options)
        params = SessionParams(
            bus=self.bus,
            session=self.id,
            storage_options=worker_options,
            context=self._injection.source,
            writer=self.writer_settings,
            capture_output=self.capture_output,
            signed=self.sign,
        )
        self._env = {SESSION_ENV: encode_params(params), **self._injection.env}
        if self._key is not None:
            self._env[KEY_ENV] = self._key.hex()
        self._args = list(self._injection.args)
        self._make_core(None)
        for source in self._made_sources:
            self._env.update(source.env())

    def _manifest(self) -> bytes:
        return msgspec.json.encode(
            Manifest(
                protocol=PROTOCOL_VERSION,
                session=self.id,
                created=time.time(),
                by=who(),
                command=command_text(self.command),
                context_sha256=hashlib.sha256(msgspec.json.encode(self.context)).hexdigest(),
                signed=self.sign,
            )
        )

    def _make_core(self, cursor: SessionCursor | None) -> None:
        launching = self._attached is None
        info = SourceSession(
            transport=self.transport,
            session=self.id,
            context=self.context,
            signed=self._key is not None,
            capture_output=self.capture_output,
            launching=launching,
            cursor=cursor,
            clock=self._clock,
        )
        self._made_sources = make_sources(info) if self._sources is None else self._sources
        self._reader = SessionReader(
            self.transport,
            self.id,
            key=self._key,
            cursor=cursor,
            schedule=self.poll_schedule,
            expect_opened=True,
            beats=True,
            claims=frozenset(s.claims for s in self._made_sources if s.claims),
            clock=self._clock,
        )
        self._core = SessionCore(
            self.id,
            self.bus,
            self._reader.core,
            sources=self._made_sources,
            collect=self.collect,
            cursor=cursor,
            liveness=self.liveness,
        )

    # --- the opened session -------------------------------------------------------------------

    @property
    def core(self) -> SessionCore:
        """The follower's state (its reader's, its sources', its result)."""
        self._require_open()
        assert self._core is not None
        return self._core

    @property
    def reader(self) -> SessionReader:
        """The reader of the session's own streams."""
        self._require_open()
        assert self._reader is not None
        return self._reader

    @property
    def sources(self) -> list[MessageSource]:
        """The session's other message sources (Dagster Pipes', by default)."""
        self._require_open()
        return self._made_sources

    @property
    def injection(self) -> Injection:
        """Where the context was put."""
        self._require_open()
        return self._injection

    @property
    def key(self) -> bytes | None:
        """The signing key of a signed session."""
        self._require_open()
        return self._key

    @property
    def withheld_options(self) -> list[str]:
        """Storage options not handed to the worker (they may be secrets)."""
        self._require_open()
        return self._withheld

    @property
    def result(self) -> SessionResult:
        """What the session heard so far, and whether anything went wrong."""
        self._require_open()
        return self.core.result

    @property
    def cursor(self) -> SessionCursor:
        """The position just past everything handed out."""
        self._require_open()
        return self.core.cursor

    @property
    def writers(self) -> list[str]:
        """Every writer heard so far, from the session's streams and every other source."""
        self._require_open()
        return self.core.writers

    @property
    def open_writers(self) -> list[str]:
        """Writers heard from that have not closed, from every source."""
        self._require_open()
        return self.core.open_writers

    def checkpoint(self) -> SessionCursor:
        """The cursor to save: the position just past everything handed out, and what was
        learnt on the way (writers, faults, counts). :meth:`Session.attach` resumes from it."""
        self._require_open()
        return self.core.checkpoint()

    def on_event(self, callback: Callable[[Event | StreamFault], None]) -> None:
        """Call ``callback`` with every event and fault as it arrives."""
        self._require_open()
        self.core.callbacks.append(callback)

    def _require_open(self) -> None:
        raise NotImplementedError

    def _cancel(self, reason: str | None, source: str) -> CancelRequest:
        self._require_open()
        request = cancel_session(
            self.transport, self.id, reason=reason or "", source=source, key=self._key
        )
        self.core.result.cancelled = request
        return request

    def _finish(self) -> None:
        """After the follow: what only the store can still tell (a cancel request)."""
        result = self.core.result
        if result.cancelled is None:
            try:
                result.cancelled = read_cancel(self.transport, self.id, self._key)
            except PipesBusError as exc:
                _log.warning("pipes_bus: could not read %s's cancel request: %s", self.id, exc)
        result.requests = self.transport.stats.snapshot()
        if not result.writers:
            result.diagnostics = self.diagnose()
        # The session's end goes on record if this follower launched it, or took it over
        # (from a cursor) and saw every writer end.
        self._ended = self._attached is None or (
            self._attached[0] is not None and not self.core.running_writers
        )

    def _record_end(self) -> None:
        """Put how the session ended on the bus (once: the first record stands)."""
        if not self._ended:
            return
        self._ended = False
        try:
            record_end(self.transport, self.core.result)
        except PipesBusError as exc:
            _log.warning("pipes_bus: could not record how %s ended: %s", self.id, exc)

    def diagnose(self) -> str:
        """What was injected, where the reader looked, and what it found there."""
        return _diagnose(self)


class Session(_Base):
    """One run of work: the environment to launch it with, its live events, its result.

    Launch the work with ``session.env`` added to its environment (and ``session.args``
    appended to its command), then iterate :meth:`follow` or call :meth:`wait`. Use it as a
    context manager, or :func:`open_session`; :meth:`close` releases the transport.
    """

    def open(self) -> Session:
        """Write the manifest, inject the context, make the launch environment (once)."""
        if not self._opened:
            self._opened = True
            try:
                self._open_io()
            except BaseException:
                self._opened = False
                raise
        return self

    def _require_open(self) -> None:
        self.open()

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
        liveness: float | None = None,
        poll: Schedule | None = None,
        sources: Sequence[MessageSource] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> Session:
        """Follow a session that is already running (e.g. after an orchestrator restart).

        With ``cursor``, it takes over: it resumes just past what was consumed before
        (nothing is delivered twice, nothing is skipped), ends with the status the first
        follower would have, and records that end on the bus when it closes. Nothing is
        launched; without a cursor nothing is written.
        """
        return cls._following(
            transport,
            session_id,
            cursor,
            key,
            collect=collect,
            grace=grace,
            liveness=liveness,
            poll=poll,
            sources=sources,
            sleep=sleep,
            clock=clock,
        ).open()

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to the launched work's environment."""
        self.open()
        return self._env

    @property
    def args(self) -> list[str]:
        """Arguments to append to the launched command (with the argv injector)."""
        self.open()
        return self._args

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
        each item from the moment it is yielded: save :meth:`checkpoint` after handling the
        item, and a restarted orchestrator (:meth:`attach`) neither repeats nor skips anything.
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
        cursor = self.cursor
        for batch in self._batches(done, grace, settle):
            for event in self.core.last_in_batch.values():
                cursor.advance(event)
            yield batch

    def wait(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> SessionResult:
        """Follow the session to completion and return its result."""
        for _ in self.batches(done=done, grace=grace, settle=settle):
            pass
        return self.result

    def cancel(self, reason: str | None = None, *, source: str = "api") -> CancelRequest:
        """Ask every writer of the session to stop, wherever it runs; return the request in
        force (the first one, if the session was cancelled already).

        Workers see it within their cancel check (2.5 s on an object store, 0.25 s on a
        directory, by default) and stop as they would on SIGTERM, or set a flag (see
        :func:`pipes_bus.open_worker`). Keep following: each writer's ``closed`` says how
        it ended, and the result's status is 7 (cancelled). ``source`` says how the request
        came (``api``, ``cli``, ``interrupt``, ``timeout``).
        """
        return self._cancel(reason, source)

    def close(self) -> None:
        """Record how the session ended (if it was followed to its end), and release the
        transport and any extra sources."""
        if self._opened and self._core is not None:
            self._record_end()
        for source in self._made_sources:
            source.close()
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> Session:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- carrying out the core's actions ---------------------------------------------------

    def _batches(
        self, done: Callable[[], bool] | None, grace: float | None, settle: float | None
    ) -> Iterator[list[Item]]:
        self.open()
        steps = self.core.follow(
            done,
            self.grace if grace is None else grace,
            self.settle if settle is None else settle,
            self._clock(),
        )
        try:
            action = next(steps)
            while True:
                outcome: Any = None
                if type(action) is Poll:
                    outcome = self._poll_all(discover=action.discover)
                elif type(action) is Scan:
                    outcome = self._scan_all()
                elif type(action) is Verify:
                    outcome = self.reader.verify(action.writers)
                elif type(action) is Wait:
                    self._sleep(action.seconds)
                else:
                    assert type(action) is Hand
                    yield action.batch
                action = steps.send((outcome, self._clock()))
        except StopIteration:
            pass
        self._finish()

    def _poll_all(self, *, discover: bool | None = None) -> list[Item]:
        batch = self.reader.poll(discover=discover, due_only=True)
        for source in self.core.active_sources():
            batch += source.poll(final=bool(discover))
        return batch

    def _scan_all(self) -> list[Item]:
        return self.reader.scan() + self._poll_all(discover=True)


def _diagnose(session: _Base) -> str:
    """What was injected, where the reader looked, and what it found there (blocking I/O)."""
    env = session._env
    injection = session._injection
    lines = [
        f"session {session.id} on {session.bus}",
        f"injected: {SESSION_ENV} ({len(env.get(SESSION_ENV, ''))} chars)"
        + "".join(
            f", {k} ({len(v)} chars)" for k, v in env.items() if k not in (SESSION_ENV, KEY_ENV)
        )
        + (
            f", args {' '.join(a.split('=')[0] + '=...' for a in session._args)}"
            if session._args
            else ""
        )
        + f"; context via {injection.source.get('via')}",
        f"looked in: {session.transport.describe(_keys.streams_prefix(session.id))}/",
    ]
    if session._withheld:
        lines.append(
            "storage options not handed to the worker: "
            f"{', '.join(session._withheld)} (they may be secrets; give the worker "
            "its own, e.g. in its environment)"
        )
    try:
        entries = session.transport.list(session.id)
        streams = [
            n for n in session.transport.list(_keys.streams_prefix(session.id)) if _keys.is_id(n)
        ]
    except Exception as exc:
        lines.append(f"could not list it: {exc}")
    else:
        shown = (
            f" ({', '.join(streams[:5])}{', ...' if len(streams) > 5 else ''})" if streams else ""
        )
        lines.append(
            f"found: {len(streams)} writer stream(s){shown}; session entries: "
            f"{', '.join(entries) or 'none'}"
        )
        if not streams:
            lines.append(
                "hint: the command never called pipes_bus.open_worker(), or it could not "
                f"reach {session.bus} (check that it sees the same location and has "
                f"{SESSION_ENV} in its environment)."
            )
    core = getattr(session, "_core", None)
    if core is not None and core.reader.last_error is not None:
        lines.append(f"last store error: {core.reader.last_error}")
    return "\n".join(lines)


@contextlib.contextmanager
def open_session(
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
    liveness: float | None = None,
    command: Sequence[str] | None = None,
    poll: Schedule | None = None,
    transport: Transport | None = None,
    sources: Sequence[MessageSource] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Session]:
    """Open a session on ``bus``, yield it, close it.

    - ``bus``: the bus URL (default: ``$PIPES_BUS_URL``, else ``~/.cache/pipes-bus/bus``);
      or give an open ``transport`` (the worker is told its URL).
    - ``context``: the run context (a :class:`~pipes_bus.Context` or a mapping of its
      members; unknown members are refused). ``injector``: where it goes: ``"auto"``
      (inline if small, else an object on the bus), ``"env"``, ``"object"``, ``"argv"``, or
      a :class:`~pipes_bus.orchestrator.ContextInjector`.
    - ``storage_options``: fsspec options for the bus; only those known to be safe reach
      the worker (the rest are in ``session.withheld_options``).
    - ``session_id``: an id of your own (default: a fresh, time-sorted one).
    - ``capture_output``: workers copy their stdout and stderr into the bus.
    - ``writer_settings``: hints for the workers' writers (``linger``, ``encoding``, ...).
    - ``sign``: sign every chunk with a fresh key that reaches workers only in their
      environment; unsigned or altered data is refused.
    - ``collect``: keep every event in the result (off for huge sessions: counts only).
    - ``grace``: seconds to wait for writers still open after the work exited.
    - ``settle``: seconds after the exit to look for writers once more.
    - ``liveness``: seconds a writer may go unheard (no message, no heartbeat) before it is
      declared lost (default: three of its announced heartbeat intervals, and a little).
    - ``command``: the command the work runs, recorded in the manifest (``pipes-bus ls``).
    - ``poll``: the probes' :class:`~pipes_bus.log.Schedule` (default: the store's).
    - ``sources``: message sources (default: every registered one, e.g. Dagster Pipes).
    - ``sleep``, ``clock``: injectable, for tests.
    """
    session = Session(
        bus,
        context=context,
        storage_options=storage_options,
        injector=injector,
        session_id=session_id,
        capture_output=capture_output,
        writer_settings=writer_settings,
        sign=sign,
        collect=collect,
        grace=grace,
        settle=settle,
        liveness=liveness,
        command=command,
        poll=poll,
        transport=transport,
        sources=sources,
        sleep=sleep,
        clock=clock,
    )
    try:
        yield session.open()
    finally:
        session.close()
