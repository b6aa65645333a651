"""The worker side of pipes_bus as a Dagster Pipes transport (imports ``dagster_pipes``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

from dagster_pipes import (
    DagsterPipesError,
    PipesContextData,
    PipesContextLoader,
    PipesMessage,
    PipesMessageWriter,
    PipesMessageWriterChannel,
    PipesParams,
)

from pipes_bus._log.writer import WriterSettings
from pipes_bus._wire.bootstrap import KEY_ENV, SESSION_ENV
from pipes_bus._wire.schema import Log, UnknownMessage
from pipes_bus._worker.api import Worker, open_worker
from pipes_bus.integrations.dagster._translate import (
    CONTEXT_PARAMS_KEY,
    PARAMS_KEY,
    exception_from_dagster,
    message_from_dagster,
)
from pipes_bus.transports import open_transport

__all__ = [
    "CONTEXT_PARAMS_KEY",
    "PARAMS_KEY",
    "PipesBusContextLoader",
    "PipesBusMessageWriter",
    "PipesBusMessageWriterChannel",
]


class PipesBusMessageWriterChannel(PipesMessageWriterChannel):
    """Writes Dagster Pipes messages into this process's own pipes_bus writer stream.

    Each message is translated and encoded at the call: a payload that cannot be encoded
    raises there, and nothing else is affected.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._closed = False

    def write_message(self, message: PipesMessage) -> None:
        data: Mapping[str, Any] = message
        method = data.get("method")
        if method == "opened":
            return  # open_worker() already sent `opened`, with pid and host
        if method == "closed":
            params = data.get("params") or {}
            exc = params.get("exception") if isinstance(params, dict) else None
            self.close(exception_from_dagster(exc) if exc else None)
            return
        translated = message_from_dagster(data, writer=self.worker.writer_id, at=time.time())
        if isinstance(translated, UnknownMessage):
            # No such kind on our wire: keep it readable as a warning rather than drop it.
            translated = Log(
                time=time.time(),
                message=f"Dagster Pipes message with unknown method {translated.kind!r}",
                level="warning",
                logger="dagster-pipes",
                fields={"dagster_message": json.dumps(dict(data), default=repr)},
            )
        self.worker._emit(translated)

    def close(self, exception: Any = None) -> None:
        """Send ``closed`` (with a structured exception, if any) and publish everything."""
        if self._closed:
            return
        self._closed = True
        # Worker.close hands the exception to ChunkWriter.close, which takes ExceptionInfo too.
        self.worker.close(exception)


class PipesBusMessageWriter(PipesMessageWriter[PipesBusMessageWriterChannel]):
    """A Dagster Pipes message writer that reports through pipes_bus.

    Pair it with :class:`PipesBusMessageReader` on the orchestrator side. Every process that
    opens it becomes its own writer stream in the session (children, multiprocessing
    workers, ranks): nothing needs coordinating and nothing is overwritten. ``label`` names
    the writer (default: $PIPES_BUS_LABEL, else rank-$RANK); ``settings`` tunes batching.
    """

    def __init__(self, *, label: str | None = None, settings: WriterSettings | None = None) -> None:
        self.label = label
        self.settings = settings

    @contextlib.contextmanager
    def open(self, params: PipesParams) -> Iterator[PipesBusMessageWriterChannel]:
        spec = params.get(PARAMS_KEY)
        if not isinstance(spec, dict) or not isinstance(spec.get("session"), str):
            raise DagsterPipesError(
                f"DAGSTER_PIPES_MESSAGES has no {PARAMS_KEY!r} entry, so this process was not "
                "launched with pipes_bus's PipesBusMessageReader. Use that reader on the "
                "orchestrator side, or drop message_writer=PipesBusMessageWriter()."
            )
        env = {SESSION_ENV: spec["session"]}
        if spec.get("key"):
            env[KEY_ENV] = spec["key"]
        worker = open_worker(label=self.label, settings=self.settings, env=env)
        channel = PipesBusMessageWriterChannel(worker)
        try:
            yield channel
        except BaseException as exc:
            channel.close(exc)
            raise
        finally:
            if not channel._closed:
                # Left without Dagster's `closed`: deliver everything, claim nothing.
                worker.flush()

    def get_opened_extras(self) -> Mapping[str, Any]:
        return {"pipes_bus": True}


class PipesBusContextLoader(PipesContextLoader):
    """Loads the context that :class:`PipesBusContextInjector` left.

    Inline (``data``) and file (``path``) params work as with Dagster's default loader;
    a context stored on the bus is read through pipes_bus, with credentials from this
    process's own environment, and checked against the digest the orchestrator injected.
    """

    @contextlib.contextmanager
    def load_context(self, params: PipesParams) -> Iterator[PipesContextData]:
        if "data" in params:
            yield params["data"]
            return
        spec = params.get(CONTEXT_PARAMS_KEY)
        if isinstance(spec, dict):
            yield json.loads(_read_context(spec))
            return
        if "path" in params:
            with open(params["path"], encoding="utf-8") as f:
                yield json.load(f)
            return
        raise DagsterPipesError(
            f"DAGSTER_PIPES_CONTEXT has none of 'data', {CONTEXT_PARAMS_KEY!r} or 'path': "
            f"{sorted(params)}. The orchestrator's context injector expects another loader."
        )


def _read_context(spec: Mapping[str, Any]) -> bytes:
    transport = open_transport(spec["bus"], **(spec.get("storage_options") or {}))
    try:
        key = spec["key"]
        data = transport.get(key, max_size=spec.get("size"))
        where = transport.describe(key)
    finally:
        transport.close()
    if data is None:
        raise DagsterPipesError(f"The Dagster context object {where} does not exist.")
    expected = spec.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise DagsterPipesError(
            f"The Dagster context object {where} is not the one the orchestrator wrote "
            "(its SHA-256 differs); refusing to use it."
        )
    return data
