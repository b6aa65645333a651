"""The Dagster side of pipes_bus as a Dagster Pipes transport (imports ``dagster``).

Import the names from :mod:`pipes_bus.integrations.dagster`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from dagster import PipesContextInjector, PipesMessageReader
from dagster._core.errors import DagsterPipesExecutionError
from dagster_pipes import PipesContextData, PipesParams

from pipes_bus._log.items import Event, StreamFault
from pipes_bus._orchestrator.injectors import ContextInjector, Injection
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._orchestrator.session import Session
from pipes_bus._redact import public_options
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.bootstrap import KEY_ENV, SESSION_ENV, Context
from pipes_bus._wire.schema import Closed, ExceptionInfo, Opened
from pipes_bus.integrations.dagster._source import DagsterPipesSource
from pipes_bus.integrations.dagster._translate import (
    CONTEXT_PARAMS_KEY,
    INLINE_CONTEXT_LIMIT,
    PARAMS_KEY,
    encode_param,
    exception_to_dagster,
    message_to_dagster,
)
from pipes_bus.transports import Transport, open_transport
from pipes_bus.transports._file import FileTransport

if TYPE_CHECKING:
    from dagster import PipesMessageHandler

__all__ = ["PipesBusContextInjector", "PipesBusMessageReader"]

# Top-level folder of context objects on a bus; not a valid session id, so `ls` skips it.
CONTEXTS_DIR = "_dagster-contexts"


class _NoContext(ContextInjector):
    """Dagster brings its own context (DAGSTER_PIPES_CONTEXT); the session injects none."""

    via = "none"

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        return Injection({})


class PipesBusMessageReader(PipesMessageReader):
    """A Dagster ``PipesMessageReader`` backed by a pipes_bus session on ``bus``.

    Workers report with ``open_dagster_pipes(message_writer=PipesBusMessageWriter())``;
    every process that does becomes its own writer stream, so several processes can report
    into one Dagster step. Workers that keep Dagster's default writer are heard too (with
    ``accept_dagster_writers``), through the session's Dagster Pipes source.

    Dagster sees the whole session as one external process: one ``opened`` (the first
    writer's), then every message as it arrives, then one ``closed`` once the work has
    exited and every writer has closed (stragglers get ``grace`` seconds). That ``closed``
    carries the first writer failure, or a summary of what went wrong (a writer that never
    closed, data that could not be delivered). With ``raise_on_problems`` (the default),
    such a session also fails the step with ``DagsterPipesExecutionError``, unless the
    step is already failing for another reason (a non-zero exit, say).

    ``storage_options`` are fsspec options for the bus; only the non-secret ones reach the
    worker, which takes credentials from its own environment. After a run, ``session`` and
    ``result`` hold the pipes_bus session and its :class:`~pipes_bus.orchestrator.SessionResult`.
    """

    def __init__(
        self,
        bus: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        grace: float = 10.0,
        sign: bool = False,
        writer_settings: Mapping[str, Any] | None = None,
        accept_dagster_writers: bool = True,
        include_stdio_in_messages: bool = False,
        raise_on_problems: bool = True,
        join_timeout: float | None = None,
    ) -> None:
        self.bus = bus
        self.storage_options = dict(storage_options or {})
        self.grace = grace
        self.sign = sign
        self.writer_settings = dict(writer_settings or {})
        self.accept_dagster_writers = accept_dagster_writers
        self.include_stdio_in_messages = include_stdio_in_messages
        self.raise_on_problems = raise_on_problems
        # Following ends at most `grace` after the process exits; the rest is slack for the store.
        self.join_timeout = grace + 60.0 if join_timeout is None else join_timeout
        self.session: Session | None = None
        self.result: SessionResult | None = None

    @contextlib.contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        session = Session(
            self.bus,
            storage_options=self.storage_options,
            injector=_NoContext(),
            sign=self.sign,
            writer_settings=self.writer_settings,
            collect=False,
            grace=self.grace,
            capture_output=self.include_stdio_in_messages,
            # The session's sources, Dagster Pipes' among them, hear default writers too.
            sources=None if self.accept_dagster_writers else [],
        ).open()
        self.session, self.result = session, None
        params: dict[str, Any] = {}
        for source in session.sources:
            if isinstance(source, DagsterPipesSource):
                params.update(source.message_params())
        spec = {"session": session.env[SESSION_ENV]}
        if KEY_ENV in session.env:
            spec["key"] = session.env[KEY_ENV]
        params[PARAMS_KEY] = spec
        stop = threading.Event()
        forwarder = _Forwarder(handler, session)
        thread = threading.Thread(
            target=forwarder.run, args=(stop,), name=f"pipes-bus-dagster-{session.id}", daemon=True
        )
        thread.start()
        failed = False
        try:
            yield params
        except BaseException:
            failed = True
            raise
        finally:
            stop.set()
            thread.join(self.join_timeout)
            session.close()
            self.result = session.result
            if thread.is_alive() and not failed:
                raise DagsterPipesExecutionError(
                    f"[pipes_bus] gave up waiting for session {session.id} on {session.bus} "
                    f"after {self.join_timeout} s."
                )
        if self.raise_on_problems and session.result.problems():
            raise DagsterPipesExecutionError(
                f"[pipes_bus] session {session.id} on {session.bus}: {session.result.reason()}"
            )

    @property
    def expected_writer_count(self) -> int:
        """One: however many processes write, Dagster sees the session as one writer.

        (Overridden without Dagster's ``@preview`` marker, so that every run does not warn.)
        """
        return 1

    def no_messages_debug_text(self) -> str:
        session = self.session
        where = f"session {session.id} on {session.bus}" if session else f"bus {self.bus}"
        text = (
            f"Attempted to read messages from pipes_bus {where}. The worker should call "
            "open_dagster_pipes(message_writer=PipesBusMessageWriter()) from "
            "pipes_bus.integrations.dagster"
        )
        if self.accept_dagster_writers:
            text += ", or keep Dagster's default writer (its file is read too)"
        if session is not None:
            text += ".\n" + session.diagnose()
        return text


class _Forwarder:
    """Follows the session in a thread and hands Dagster one process's worth of messages."""

    def __init__(self, handler: PipesMessageHandler, session: Session) -> None:
        self.handler = handler
        self.session = session
        self.opened = False
        self.failure: ExceptionInfo | None = None

    def run(self, stop: threading.Event) -> None:
        try:
            for item in self.session.follow(done=stop.is_set):
                self._forward(item)
        except Exception:
            self.handler.report_pipes_framework_exception(
                "PipesBusMessageReader reader thread", sys.exc_info()
            )
        finally:
            self._close()

    def _send(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        try:
            self.handler.handle_message(message)  # type: ignore[arg-type]
        except Exception:
            # One message Dagster refuses must not cost the ones after it.
            self.handler.report_pipes_framework_exception(
                f"PipesBusMessageReader handling {message.get('method')!r}", sys.exc_info()
            )

    def _log(self, level: str, text: str) -> None:
        self._send(message_to_dagster_log(level, f"[pipes_bus] {text}"))

    def _forward(self, item: Event | StreamFault) -> None:
        if type(item) is StreamFault:
            self._log("error", f"undeliverable data: {item}")
            return
        assert isinstance(item, Event)
        message = item.message
        kind = type(message)
        if kind is Opened:
            if not self.opened:
                self.opened = True
                self._send(message_to_dagster(message))
            else:
                self._log("debug", f"writer {item.writer} opened")
        elif kind is Closed:
            exc = message.exception  # type: ignore[union-attr]
            if exc is not None:
                self._log("error", f"writer {item.writer} failed: {exc.type}: {exc.message}")
                if self.failure is None:
                    self.failure = exc
        else:
            self._send(message_to_dagster(message))

    def _close(self) -> None:
        if not self.opened:
            return  # Dagster then explains that nothing arrived (no_messages_debug_text)
        result = self.session.result
        params: dict[str, Any] = {}
        if self.failure is not None:
            params["exception"] = exception_to_dagster(self.failure)
        elif result.problems():
            params["exception"] = {
                "message": f"PipesBusSessionIncomplete: {result.reason()}",
                "stack": [],
                "name": "PipesBusSessionIncomplete",
                "cause": None,
                "context": None,
            }
        self._send({"__dagster_pipes_version": "0.1", "method": "closed", "params": params})


def message_to_dagster_log(level: str, text: str) -> dict[str, Any]:
    """A Dagster Pipes ``log`` message."""
    return {
        "__dagster_pipes_version": "0.1",
        "method": "log",
        "params": {"message": text, "level": level},
    }


class PipesBusContextInjector(PipesContextInjector):
    """Injects Dagster's context inline when small, else as an object on a pipes_bus bus.

    Small contexts travel as ``{"data": ...}``, which every Dagster context loader reads.
    Larger ones are stored under ``_dagster-contexts/`` on ``bus`` (deleted after the run)
    and read back by :class:`~pipes_bus.integrations.dagster.PipesBusContextLoader`, with a
    SHA-256 digest that travels in the environment; on a local-directory bus, Dagster's
    default loader can read the file too.
    """

    def __init__(
        self,
        bus: str | None = None,
        *,
        storage_options: Mapping[str, Any] | None = None,
        inline_limit: int = INLINE_CONTEXT_LIMIT,
    ) -> None:
        self.bus = bus
        self.storage_options = dict(storage_options or {})
        self.inline_limit = inline_limit
        self._where: str | None = None

    @contextlib.contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        if len(encode_param({"data": context_data})) <= self.inline_limit:
            self._where = "inline"
            yield {"data": context_data}
            return
        from pipes_bus._orchestrator.session import default_bus_url

        bus = self.bus or default_bus_url()
        transport = open_transport(bus, **self.storage_options)
        key = f"{CONTEXTS_DIR}/{_keys.new_id('c')}.json"
        body = json.dumps(context_data).encode("utf-8")
        self._where = transport.describe(key)
        try:
            transport.put_if_absent(key, body)
            params: dict[str, Any] = {
                CONTEXT_PARAMS_KEY: {
                    "bus": bus,
                    "key": key,
                    "storage_options": public_options(self.storage_options)[0],
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "size": len(body),
                }
            }
            if isinstance(transport, FileTransport):
                params["path"] = os.path.join(transport.root, *key.split("/"))
            yield params
        finally:
            try:
                transport.delete(key)
            finally:
                transport.close()

    def no_messages_debug_text(self) -> str:
        if self._where in (None, "inline"):
            return "Injected the context inline (DAGSTER_PIPES_CONTEXT, {'data': ...})."
        return (
            f"Injected the context as {self._where}; the worker needs "
            "open_dagster_pipes(context_loader=PipesBusContextLoader())."
        )
