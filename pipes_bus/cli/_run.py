"""``pipes-bus run``: launch a command as a worker in a new session and follow it."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipes_bus._errors import ConfigurationError, PipesBusError, StoreError
from pipes_bus._log.schedule import Schedule
from pipes_bus._orchestrator.launch import require_shared, start
from pipes_bus._orchestrator.session import Session
from pipes_bus._wire.bootstrap import make_context
from pipes_bus.cli import command_after_dashes, require_seconds
from pipes_bus.cli._common import follow, key_values, storage_options

__all__ = ["run"]


def _context(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    where = "--context"
    if text.startswith("@"):
        where = f"--context {text}"
        try:
            text = Path(text[1:]).read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot read the file: {exc}") from exc
        except UnicodeDecodeError:
            raise ConfigurationError(f"{where}: the file is not UTF-8 text (JSON).") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError('--context must be a JSON object, e.g. \'{"asset_keys": ["a"]}\'.')
    return value


def _writer_hints(args: argparse.Namespace) -> dict[str, Any] | None:
    hints = {
        name: value
        for name, value in (("linger", args.linger), ("heartbeat", args.heartbeat))
        if value is not None
    }
    return hints or None


def run(args: argparse.Namespace) -> int:
    """Run the command; the session's exit status."""
    from pipes_bus.cli._events import EventSink
    from pipes_bus.cli._view import make_view

    command = command_after_dashes(args, "run -- python job.py")
    require_seconds(args, "timeout", "grace", "settle")
    session = Session(
        args.bus,
        context=make_context(_context(args.context), what="--context"),
        storage_options=storage_options(args.storage_option),
        injector=args.injector,
        session_id=args.session_id,
        capture_output=args.capture_output,
        sign=args.sign,
        writer_settings=_writer_hints(args),
        poll=Schedule(minimum=args.poll) if args.poll is not None else None,
        collect=False,
        grace=args.grace,
        settle=args.settle,
        liveness=args.liveness,
        command=command,
    )
    from pipes_bus.launchers import make_launcher

    launcher = make_launcher(args.launcher, **key_values(args.launcher_option, "--launcher-option"))
    require_shared(session)
    local = args.launcher == "subprocess"
    # A local command's stdout and stderr reach this terminal already: captured copies of
    # them are not printed twice (they are in --events and the result). A platform's
    # output comes back through the bus, and is shown.
    view = make_view(quiet=args.quiet, show_output=not local)
    sink = EventSink(args.events) if args.events else None
    cursor = Path(args.cursor) if args.cursor else None
    if args.exec:
        from pipes_bus._worker.exec import wrap

        command = wrap(command)
        if not local:  # the platform's output is forwarded already: exec must not echo it
            command.insert(command.index("exec") + 1, "--no-echo")
    try:
        process = start(session, launcher, command, grace=args.grace)
    except BaseException:
        session.close()  # a launch the platform refused is on record as such
        raise
    where = "" if local else f", {launcher.describe()} job {process.pid}"
    view.start(f"session {session.id} on {session.bus}{where}")
    stops = _Stops(process, view, session, args.timeout)
    session._sleep = stops.sleep
    try:
        with stops.handling():
            try:
                follow(session, view, sink, stops.done, None, cursor)
            except StoreError as exc:
                # The bus failed; the command may still be working. Its status decides.
                session.result.bus_error = str(exc)
                view.line(f"pipes-bus: {exc}; waiting for the command to exit", "red")
                while not stops.done():
                    stops.sleep(1.0)
    finally:
        if process.poll() is None or process.group_alive():
            process.stop_now()  # never leave the command behind, whatever happened here
        session.result.exit_code = process.wait()
        session.result.stopped = stops.reason
        if sink is not None:
            sink.close()
        session.close()
    result = session.result
    view.finish(result, session.url)
    return result.exit_status()


class _Stops:
    """Ctrl-C, SIGTERM and the timeout while `run` follows a command.

    The first Ctrl-C (or the end of ``--timeout``) cancels the session, so that writers
    anywhere stop, passes SIGINT (SIGTERM for the timeout) on to the command's process
    group and starts the grace; the next one, or the end of the grace, terminates the group
    (SIGTERM, then SIGKILL); a third kills it at once. SIGTERM and SIGHUP are passed on the
    same way. The cancel request is written by the main loop, never by a signal handler.
    """

    def __init__(
        self, process: Any, view: Any, session: Session, timeout: float | None = None
    ) -> None:
        self.process = process
        self.view = view
        self.session = session
        self.reason: str | None = None
        self.interrupts = 0
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self._cancel: tuple[str, str] | None = None  # (reason, source), to send
        self._cancelled = False
        self._wake = threading.Event()
        self._notes: list[str] = []

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        process = self.process
        grace = process.policy.grace
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts == 1:
                self.reason = "pipes-bus passed on an interrupt"
                self._cancel = self._cancel or ("interrupted (Ctrl-C)", "interrupt")
                process.request_stop("interrupt", signal.SIGINT)
                self._notes.append(
                    "interrupted: cancelled the session and passed the interrupt on to the "
                    f"command; waiting up to {grace:g} s for it to finish (Ctrl-C again to "
                    "stop it now)"
                )
            elif self.interrupts == 2:
                process.terminate()
                self._notes.append(
                    "stopping the command: SIGTERM to its process group, SIGKILL in "
                    f"{process.policy.kill_after:g} s (Ctrl-C again to kill it now)"
                )
            else:
                process.kill()
                self._notes.append("killing the command's process group")
        else:
            name = signal.Signals(signum).name
            self.reason = self.reason or f"pipes-bus received {name}"
            self._cancel = self._cancel or (f"pipes-bus received {name}", "signal")
            process.request_stop(name, signum)
            self._notes.append(f"received {name}: cancelled the session, passed it on")
        self._wake.set()

    def _check_timeout(self) -> None:
        if self._deadline is None or time.monotonic() < self._deadline:
            return
        self._deadline = None
        grace = self.process.policy.grace
        text = f"timed out after {self._timeout:g} s (--timeout)"
        self.reason = self.reason or f"pipes-bus {text}"
        self._cancel = self._cancel or (text, "timeout")
        self.process.request_stop("timeout", signal.SIGTERM)
        self._notes.append(
            f"{text}: cancelled the session and sent SIGTERM to the command; SIGKILL if it "
            f"is still running in {grace + self.process.policy.kill_after:g} s"
        )

    def _send_cancel(self) -> None:
        if self._cancel is None or self._cancelled:
            return
        self._cancelled = True
        reason, source = self._cancel
        try:
            self.session.cancel(reason, source=source)
        except PipesBusError as exc:
            self._notes.append(f"could not cancel the session on the bus: {exc}")

    def done(self) -> bool:
        """Whether the command has exited; carries out any stop that is due."""
        self._check_timeout()
        self._send_cancel()
        while self._notes:
            self.view.line(f"pipes-bus: {self._notes.pop(0)}", "yellow")
        self.process.tick()
        return bool(self.process.poll() is not None)

    def sleep(self, seconds: float) -> None:
        due = [seconds]
        step = self.process.next_deadline()
        if step is not None:
            due.append(step)
        if self._deadline is not None:
            due.append(max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(min(due))
        self._wake.clear()
