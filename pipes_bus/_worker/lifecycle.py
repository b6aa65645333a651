"""How a worker process ends: SIGTERM, SIGINT and SIGHUP, interpreter exit, uncaught
exceptions and fork.

Every open worker in the process is registered here. A signal closes them all (their
``closed`` carries it) and then ends the process as the signal would have; interpreter exit
closes whatever is still open, with the uncaught exception if there was one; a forked child
forgets its parent's workers and opens its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipes_bus._worker.api import Worker

__all__ = ["WorkerTerminated", "die_by", "install_handlers", "open_workers", "registry_lock"]

open_workers: weakref.WeakSet[Worker] = weakref.WeakSet()
registry_lock = threading.Lock()


class WorkerTerminated(BaseException):
    """Raised in the main thread when the worker receives SIGTERM (or SIGINT/SIGHUP)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}")


class Cancelled(WorkerTerminated):
    """Raised in the main thread when the session asks its writers to stop.

    ``request`` is the :class:`~pipes_bus._wire.control.CancelRequest`: who asked, and why.
    Leaving the ``open_worker()`` block with it sends ``closed`` carrying it, then ends the
    process the way SIGTERM would.
    """

    def __init__(self, reason: str = "", by: str = "", request: Any = None) -> None:
        BaseException.__init__(
            self, f"cancelled by {by or 'the session'}" + (f": {reason}" if reason else "")
        )
        self.signum = signal.SIGTERM
        self.reason = reason
        self.by = by
        self.request = request


# A cancel request waiting for the main thread to raise it (see cancel_main).
_pending_cancel: Cancelled | None = None


def cancel_main(cancelled: Cancelled, close_all: Any) -> None:
    """Stop the main thread the way SIGTERM would, with ``cancelled`` as the exception.

    Where pipes_bus handles SIGTERM, the signal goes to the main thread (it interrupts a
    sleep or a blocking read there) and the handler raises ``cancelled``; where the program
    handles SIGTERM itself, its handler runs, as on a real SIGTERM; where nobody does, the
    open workers are closed with ``cancelled`` and the process ends by SIGTERM.
    """
    global _pending_cancel
    if _pending_cancel is not None:
        return
    _pending_cancel = cancelled
    handler = signal.getsignal(signal.SIGTERM)
    if callable(handler):
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
        return
    close_all(cancelled)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


_atexit_registered = False
_signals_installed = False
_previous_handlers: dict[int, Any] = {}
_uncaught: BaseException | None = None


def _on_signal(signum: int, frame: FrameType | None) -> None:
    with registry_lock:
        busy = bool(open_workers)
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
    if signum == signal.SIGTERM and _pending_cancel is not None:
        raise _pending_cancel
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


def install_handlers() -> None:
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


def die_by(signum: int) -> None:
    """After closing cleanly, end the process the way the signal would have."""
    with registry_lock:
        others = list(open_workers)
    for worker in others:
        with contextlib.suppress(Exception):
            worker.close(WorkerTerminated(signum))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _close_all_at_exit() -> None:
    with registry_lock:
        workers = list(open_workers)
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.close(_uncaught)


def _forget_after_fork() -> None:
    # A forked child shares nothing with its parent's writers: it opens its own, and
    # until it does, signals behave as they would without pipes_bus.
    for worker in list(open_workers):
        worker._inherited = True
        if worker._writer is not None:
            worker._emit = worker._refuse
    open_workers.clear()
    if threading.current_thread() is threading.main_thread():
        _restore_handlers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


# The most text one output message carries: a longer line goes out in pieces this size.
