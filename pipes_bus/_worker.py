"""The worker side: ``open_worker()`` and the handle it yields."""

from __future__ import annotations

import atexit
import codecs
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from . import _keys
from ._context import (
    KEY_ENV,
    LABEL_ENV,
    Context,
    SessionParams,
    decode_params,
    load_context,
    parse_key,
)
from ._errors import ConfigurationError, PipesBusError, PipesBusWarning
from ._retry import RetryPolicy
from ._schema import (
    Check,
    Custom,
    ExceptionInfo,
    Log,
    Materialization,
    Message,
    Opened,
    Output,
    Progress,
    WriterInfo,
    metadata_value,
)
from ._version import __version__
from ._writer import ChunkWriter, WriterSettings
from .transports import open_transport

__all__ = ["Worker", "WorkerTerminated", "open_worker"]

_open_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
_registry_lock = threading.Lock()


class WorkerTerminated(BaseException):
    """Raised in the main thread when the worker receives SIGTERM (or SIGINT/SIGHUP)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")


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
        self._capture: _OutputCapture | None = None

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
        with _registry_lock:
            _open_workers.discard(self)
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
            _die_by(exc.signum)
        elif isinstance(exc, SystemExit):
            # sys.exit(0) inside the block is a clean finish; any other code is a failure.
            self.close(None if exc.code in (0, None) else exc)
        else:
            self.close(exc)


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
    with _registry_lock:
        _open_workers.add(worker)
    _install_handlers()
    if params.capture_output:
        worker._capture = _OutputCapture(worker)
        worker._capture.start()
    return worker


# --- process lifecycle ---------------------------------------------------------------------

_atexit_registered = False
_signals_installed = False
_previous_handlers: dict[int, Any] = {}
_uncaught: BaseException | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    with _registry_lock:
        busy = bool(_open_workers)
    if not busy:
        # No writer open in this process: behave exactly as if we had never been here.
        _restore_handlers()
        os.kill(os.getpid(), signum)
        return
    # Never interrupt pipes_bus itself (a half-appended message would corrupt a chunk):
    # re-deliver the signal a moment later, once the call has returned.
    f = frame
    while f is not None:
        if str(f.f_globals.get("__name__", "")).startswith("pipes_bus."):
            timer = threading.Timer(0.02, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return
        f = f.f_back
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise WorkerTerminated(signum)


def _restore_handlers() -> None:
    global _signals_installed
    for sig, previous in _previous_handlers.items():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _previous_handlers.clear()
    _signals_installed = False


def _excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    # Remember an uncaught exception, so writers closed at exit report it.
    global _uncaught
    _uncaught = exc
    _previous_excepthook(kind, exc, tb)


_previous_excepthook = sys.excepthook


def _install_handlers() -> None:
    global _atexit_registered, _signals_installed, _previous_excepthook
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_close_all_at_exit)
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return
    _signals_installed = True
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT):
        if sig is None:
            continue
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, None) or current is signal.default_int_handler:
            _previous_handlers[sig] = current
            signal.signal(sig, _on_signal)


def _die_by(signum: int) -> None:
    """After closing cleanly, end the process the way the signal would have."""
    with _registry_lock:
        others = list(_open_workers)
    for worker in others:
        with contextlib.suppress(Exception):
            worker.close(WorkerTerminated(signum))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _disabled(message: Message) -> int:
    """What a worker outside any session does with a report: nothing."""
    return -1


def _close_all_at_exit() -> None:
    with _registry_lock:
        workers = list(_open_workers)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.close(_uncaught)


def _forget_after_fork() -> None:
    # A forked child shares nothing with its parent's writers: it opens its own, and
    # until it does, signals behave as they would without pipes_bus.
    for worker in list(_open_workers):
        worker._inherited = True
        if worker._writer is not None:
            worker._emit = worker._refuse
    _open_workers.clear()
    if threading.current_thread() is threading.main_thread():
        _restore_handlers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# The most text one output message carries: a longer line goes out in pieces this size.
OUTPUT_PIECE = 256 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _OutputCapture:
    """Tee this process's stdout and stderr (file descriptors 1 and 2) into the bus."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._threads: list[threading.Thread] = []
        self._saved: list[tuple[int, int]] = []
        self._lost = 0  # characters that could not be carried (the writer failed)
        self._warned = False

    def start(self) -> None:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            stream = sys.stdout if fd == 1 else sys.stderr
            with contextlib.suppress(Exception):
                stream.flush()
            original = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._saved.append((fd, original))
            thread = threading.Thread(
                target=self._pump,
                args=(read_end, original, name),
                daemon=True,
                name=f"pipes-bus-{name}",
            )
            thread.start()
            self._threads.append(thread)

    def _pump(self, read_end: int, original: int, name: str) -> None:
        # Whole lines go out as they come; a line longer than OUTPUT_PIECE goes out in
        # pieces of that size. Nothing is dropped, and no byte is looked at twice.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending: list[str] = []
        size = 0
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    break
                with contextlib.suppress(OSError):  # the real stream may be closed
                    _write_all(original, data)
                text = decoder.decode(data)
                end = text.rfind("\n") + 1
                if end:
                    pending.append(text[:end])
                    self._send(name, "".join(pending))
                    pending = [text[end:]] if end < len(text) else []
                    size = len(text) - end
                else:
                    pending.append(text)
                    size += len(text)
                if size >= OUTPUT_PIECE:
                    self._send(name, "".join(pending))
                    pending, size = [], 0
        rest = "".join(pending) + decoder.decode(b"", final=True)
        if rest:
            self._send(name, rest)

    def _send(self, name: str, text: str) -> None:
        for start in range(0, len(text), OUTPUT_PIECE):
            piece = text[start : start + OUTPUT_PIECE]
            try:
                self._worker._emit(Output(time=time.time(), stream=name, text=piece))  # type: ignore[arg-type]
            except PipesBusError as exc:
                self._lost += len(piece)
                if not self._warned:
                    self._warned = True
                    stderr = dict(self._saved).get(2, 2)
                    with contextlib.suppress(OSError):
                        _write_all(
                            stderr,
                            f"pipes_bus: captured {name} is no longer carried to the bus "
                            f"({exc}); it still goes to the real {name}\n".encode(),
                        )

    def stop(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, original in self._saved:
            os.dup2(original, fd)  # closes our pipe's write end: the pump sees EOF
        for thread in self._threads:
            thread.join(timeout=5)
        for _, original in self._saved:
            os.close(original)
        self._saved.clear()


def exception_info(exc: BaseException) -> ExceptionInfo:
    """The structured form of ``exc`` that ``closed`` carries."""
    return ExceptionInfo.from_exception(exc)
