"""The worker side: ``open_worker()`` and the handle it yields."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
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
from pipes_bus._wire.control import CancelRequest
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
from pipes_bus._worker.control import Control
from pipes_bus._worker.lifecycle import (
    Cancelled,
    WorkerTerminated,
    cancel_main,
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
        self._control: Control | None = None
        self.on_cancel = "raise"
        #: Set when the session asks its writers to stop (see :attr:`cancelled`).
        self.cancel_requested = threading.Event()
        self._cancel: CancelRequest | None = None

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

    @property
    def cancelled(self) -> CancelRequest | None:
        """The session's cancel request (who asked, and why), once there is one."""
        return self._cancel

    def check_cancelled(self) -> None:
        """Raise :class:`~pipes_bus.Cancelled` if the session asked its writers to stop."""
        if self._cancel is not None:
            raise Cancelled(self._cancel.reason, self._cancel.by, self._cancel)

    def _cancelled(self, request: CancelRequest) -> None:
        # On the control thread: note it, and stop the program unless it checks a flag.
        if self._closed:
            return
        self._cancel = request
        self.cancel_requested.set()
        if self.on_cancel == "raise":
            cancel_main(Cancelled(request.reason, request.by, request), _close_all_with)

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
        if self._control is not None:
            self._control.stop()
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


# Where a test (or a container) says which host the writer is on, for the dead-pid rule.
HOST_ENV = "PIPES_BUS_HOSTNAME"


def control_timings(transport: Any, settings: WriterSettings) -> tuple[float | None, float]:
    """(heartbeat, cancel check) in seconds: the settings', else what suits the store.

    A remote store (each request a network round trip, and a price) gets a beat a minute
    and a look for a cancel every 2.5 s; a local one a beat every 5 s and a look every
    quarter second.
    """
    remote = bool(getattr(transport.capabilities, "read_ahead", False))
    heartbeat = settings.heartbeat if settings.heartbeat is not None else (60.0 if remote else 5.0)
    check = (
        settings.cancel_check if settings.cancel_check is not None else (2.5 if remote else 0.25)
    )
    return (heartbeat if heartbeat > 0 else None), check


def _close_all_with(exception: BaseException) -> None:
    with registry_lock:
        workers = list(open_workers)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.close(exception)


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
    on_cancel: str = "raise",
) -> Worker:
    """Open this process's writer stream in the session that launched it.

    Returns a :class:`Worker`; use it as a context manager (``with open_worker() as w``)
    so that leaving the block sends ``closed``, with the exception if the block raised.
    A worker that is never closed explicitly is closed at interpreter exit, and on SIGTERM.
    ``label`` names the writer (e.g. "rank 3"; default: $PIPES_BUS_LABEL, else rank-$RANK).
    Outside a session it raises NotInSessionError, unless ``allow_missing=True``: then it
    warns and returns a worker that reports nothing.

    When the session is cancelled (``pipes-bus cancel``, ``Session.cancel()``, Ctrl-C or a
    timeout of ``pipes-bus run``), ``on_cancel="raise"`` (the default) stops the program as
    SIGTERM would: :class:`~pipes_bus.Cancelled` is raised in the main thread, ``closed``
    carries it and the process exits. With ``on_cancel="flag"`` nothing is raised: check
    ``worker.cancelled`` (or wait on ``worker.cancel_requested``) and finish cleanly.
    """
    if on_cancel not in ("raise", "flag"):
        raise ConfigurationError(f"on_cancel must be 'raise' or 'flag', not {on_cancel!r}.")
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
    return _start(params, label or _default_label(), settings, environ, on_cancel)


def _start(
    params: SessionParams,
    label: str | None,
    settings: WriterSettings | None,
    env: Mapping[str, str],
    on_cancel: str,
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
    chosen = _writer_settings(params, settings)
    writer = ChunkWriter(transport, params.session, writer_id, chosen, key=key)
    worker = Worker(context=context, writer=writer, params=params, label=label)
    heartbeat, check = control_timings(transport, chosen)
    writer.write(
        Opened(
            time=time.time(),
            info=WriterInfo(
                id=writer_id,
                label=label,
                pid=os.getpid(),
                host=env.get(HOST_ENV) or socket.gethostname(),
                library=f"pipes_bus {__version__}",
            ),
            heartbeat=heartbeat,
        )
    )
    # Publish `opened` now: the orchestrator counts this writer from here on.
    writer.flush()
    with registry_lock:
        open_workers.add(worker)
    install_handlers()
    worker.on_cancel = on_cancel
    worker._control = Control(
        transport,
        params.session,
        writer,
        heartbeat=heartbeat,
        check=check,
        on_cancel=worker._cancelled,
        key=key,
    ).start()
    if params.capture_output:
        worker._capture = OutputCapture(worker)
        worker._capture.start()
    return worker


def exception_info(exc: BaseException) -> ExceptionInfo:
    """The structured form of ``exc`` that ``closed`` carries."""
    return ExceptionInfo.from_exception(exc)
