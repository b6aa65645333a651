"""The worker side: ``open_worker()`` and the handle it yields."""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from pipes_bus._errors import ConfigurationError, PipesBusError, PipesBusWarning
from pipes_bus._log.schedule import RetryPolicy
from pipes_bus._log.writer import ChunkWriter, WriterSettings
from pipes_bus._version import __version__
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.bootstrap import (
    KEY_ENV,
    LABEL_ENV,
    Context,
    SessionParams,
    decode_params,
    parse_key,
)
from pipes_bus._wire.schema import (
    Check,
    Custom,
    ExceptionInfo,
    Log,
    Materialization,
    Message,
    Opened,
    Progress,
    WriterInfo,
    metadata_value,
)
from pipes_bus._worker.capture import OutputCapture
from pipes_bus._worker.lifecycle import (
    WorkerTerminated,
    die_by,
    install_handlers,
    open_workers,
    registry_lock,
)
from pipes_bus._worker.loaders import load_context
from pipes_bus.transports import open_transport

__all__ = ["Worker", "open_worker"]


class _LogHandler(logging.Handler):
    _STANDARD = frozenset(
        logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
    )

    def __init__(self, worker: Worker) -> None:
        super().__init__(logging.DEBUG)
        self._worker = worker

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = {
                k: v if isinstance(v, str | int | float | bool | type(None)) else repr(v)
                for k, v in record.__dict__.items()
                if k not in self._STANDARD
            }
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            self._worker._emit(
                Log(
                    time=record.created,
                    message=record.getMessage(),
                    level=record.levelname.lower(),
                    logger=record.name,
                    fields=fields,
                )
            )
        except Exception:
            self.handleError(record)


class Worker:
    """A worker's handle on its session: the context, a logger, and the report methods.

    Thread-safe. Every report is encoded at the call, so a bad payload raises here and
    nothing else is affected.
    """

    def __init__(
        self,
        *,
        context: Context,
        writer: ChunkWriter | None,
        params: SessionParams | None,
        label: str | None,
    ) -> None:
        self.context = context
        self.params = params
        self.label = label
        self._writer = writer
        self._pid = os.getpid()
        self._inherited = False  # set in a forked child: this handle is the parent's
        # Every report ends here: the writer's own write() (or a stand-in), bound once.
        self._emit: Callable[[Message], int] = writer.write if writer else _disabled
        self._closed = False
        self.writer_id = writer.writer if writer else ""
        # Not logging.getLogger(): the logging module keeps every logger it hands out for
        # good, and a Dask or Ray process may open thousands of short-lived workers. This
        # one is freed with its worker, and still passes records on to "pipes_bus.worker".
        self.log = logging.Logger(f"pipes_bus.worker.{self.writer_id or 'disabled'}")
        self.log.parent = logging.getLogger("pipes_bus.worker")
        self.log.setLevel(logging.DEBUG)
        self._handler: _LogHandler | None = None
        if writer is not None:
            self._handler = _LogHandler(self)
            self.log.addHandler(self._handler)
        self._capture: OutputCapture | None = None

    @property
    def enabled(self) -> bool:
        """False for the no-op worker opened outside a session with allow_missing=True."""
        return self._writer is not None

    @property
    def session(self) -> str:
        """The session id ('' when disabled)."""
        return self.params.session if self.params else ""

    def _refuse(self, message: Message) -> int:
        raise PipesBusError(
            f"This worker handle belongs to process {self._pid}; call open_worker() in "
            "this process to get its own writer stream."
        )

    def report_materialization(
        self,
        asset_key: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        data_version: str | None = None,
    ) -> None:
        """Report that an asset was materialized."""
        self._emit(
            Materialization(
                time=time.time(),
                asset_key=asset_key or self.context.asset_key,
                data_version=data_version,
                metadata={k: metadata_value(v) for k, v in (metadata or {}).items()},
            )
        )

    def report_check(
        self,
        check_name: str,
        passed: bool,
        *,
        asset_key: str | None = None,
        severity: str = "error",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Report the result of a data-quality check."""
        if severity not in ("warn", "error"):
            raise ConfigurationError(f"severity must be 'warn' or 'error', not {severity!r}.")
        self._emit(
            Check(
                time=time.time(),
                asset_key=asset_key or self.context.asset_key,
                check_name=check_name,
                passed=bool(passed),
                severity=severity,  # type: ignore[arg-type]
                metadata={k: metadata_value(v) for k, v in (metadata or {}).items()},
            )
        )

    def report_progress(
        self,
        current: float,
        total: float | None = None,
        *,
        unit: str | None = None,
        label: str | None = None,
    ) -> None:
        """Report progress of long work."""
        self._emit(Progress(time=time.time(), current=current, total=total, unit=unit, label=label))

    def report_custom_message(self, payload: Any) -> None:
        """Report any msgspec-encodable payload."""
        self._emit(Custom(time=time.time(), payload=payload))

    def flush(self) -> None:
        """Block until everything reported so far is on the store."""
        if self._writer is not None:
            self._writer.flush()

    def close(self, exception: BaseException | None = None) -> None:
        """Send ``closed`` (with ``exception``, if any) and publish everything."""
        if self._closed:
            return
        self._closed = True
        with registry_lock:
            open_workers.discard(self)
        if self._capture is not None:
            self._capture.stop()
        if self._handler is not None:
            self.log.removeHandler(self._handler)
        if self._writer is not None and not self._inherited:
            self._writer.close(exception)

    def __repr__(self) -> str:
        return f"<Worker {self.writer_id or 'disabled'} session={self.session!r}>"

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is None:
            self.close()
        elif isinstance(exc, WorkerTerminated):
            self.close(exc)
            die_by(exc.signum)
        elif isinstance(exc, SystemExit):
            # sys.exit(0) inside the block is a clean finish; any other code is a failure.
            self.close(None if exc.code in (0, None) else exc)
        else:
            self.close(exc)


def _disabled(message: Message) -> int:
    """What a worker outside any session does with a report: nothing."""
    return -1


def _writer_settings(params: SessionParams, settings: WriterSettings | None) -> WriterSettings:
    if settings is not None:
        return settings
    options = dict(params.writer)
    try:
        if isinstance(options.get("retry"), dict):
            options["retry"] = RetryPolicy(**options["retry"])
        return WriterSettings(**options)
    except TypeError as exc:
        raise ConfigurationError(f"The session's writer settings are invalid: {exc}") from exc


def _default_label() -> str | None:
    if os.environ.get(LABEL_ENV):
        return os.environ[LABEL_ENV]
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return f"rank-{os.environ[var]}"
    return None


def open_worker(
    *,
    label: str | None = None,
    allow_missing: bool = False,
    settings: WriterSettings | None = None,
    env: Mapping[str, str] | None = None,
) -> Worker:
    """Open this process's writer stream in the session that launched it.

    Returns a :class:`Worker`; use it as a context manager (``with open_worker() as w``)
    so that leaving the block sends ``closed``, with the exception if the block raised.
    A worker that is never closed explicitly is closed at interpreter exit, and on SIGTERM.
    ``label`` names the writer (e.g. "rank 3"; default: $PIPES_BUS_LABEL, else rank-$RANK).
    Outside a session it raises NotInSessionError, unless ``allow_missing=True``: then it
    warns and returns a worker that reports nothing.
    """
    environ = os.environ if env is None else env
    try:
        params = decode_params(environ)
    except PipesBusError:
        if not allow_missing:
            raise
        warnings.warn(
            "Not in a pipes_bus session: reports from this worker go nowhere.",
            PipesBusWarning,
            stacklevel=2,
        )
        return Worker(context=Context(), writer=None, params=None, label=label)
    return _start(params, label or _default_label(), settings, environ)


def _start(
    params: SessionParams,
    label: str | None,
    settings: WriterSettings | None,
    env: Mapping[str, str],
) -> Worker:
    transport = open_transport(params.bus, **params.storage_options)
    context = load_context(params, transport, env)
    writer_id = _keys.new_id("w", label)
    key = None
    if params.signed:
        secret = env.get(KEY_ENV)
        if not secret:
            raise ConfigurationError(
                f"The session signs its chunks, but {KEY_ENV} is not set in this environment."
            )
        key = parse_key(secret)
    writer = ChunkWriter(
        transport, params.session, writer_id, _writer_settings(params, settings), key=key
    )
    worker = Worker(context=context, writer=writer, params=params, label=label)
    writer.write(
        Opened(
            time=time.time(),
            info=WriterInfo(
                id=writer_id,
                label=label,
                pid=os.getpid(),
                host=socket.gethostname(),
                library=f"pipes_bus {__version__}",
            ),
        )
    )
    # Publish `opened` now: the orchestrator counts this writer from here on.
    writer.flush()
    with registry_lock:
        open_workers.add(worker)
    install_handlers()
    if params.capture_output:
        worker._capture = OutputCapture(worker)
        worker._capture.start()
    return worker


def exception_info(exc: BaseException) -> ExceptionInfo:
    """The structured form of ``exc`` that ``closed`` carries."""
    return ExceptionInfo.from_exception(exc)
