"""``pipes-bus exec``: any program, in any language, as a writer of its session.

The program needs no SDK. ``exec`` opens a writer in the session named by its environment,
runs the program as a child in a process group of its own and carries what it prints:

- every line of its stdout and stderr becomes an ``output`` event (a line longer than
  :data:`LINE_PIECE` characters goes out in pieces; nothing is dropped) and is echoed,
  byte for byte, to exec's own stdout and stderr;
- a line ``::pipes-bus::{JSON}`` is a report instead (see :class:`Directives`); a directive
  that is not valid stays an output line, and a warning ``log`` says what was wrong;
- SIGTERM, SIGINT and SIGHUP are passed on to the program's process group, and so is the
  session's cancel request (as SIGTERM, SIGKILL after the grace);
- ``closed`` says how the program ended, and exec exits with its status.

At import this loads only the standard library, msgspec and the wire schema (no writer, no
transport, nothing of the orchestrator's): launchers import :func:`wrap` to put ``exec`` in
front of a command.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import msgspec

from pipes_bus._errors import CommandFailed
from pipes_bus._groups import group_alive, signal_group
from pipes_bus._status import EXIT_BUS
from pipes_bus._worker.capture import OUTPUT_PIECE

if TYPE_CHECKING:
    from pipes_bus._wire.control import CancelRequest
    from pipes_bus._worker.api import Worker

__all__ = [
    "DIRECTIVE_KINDS",
    "LINE_PIECE",
    "MARKER",
    "REPORT_METHODS",
    "CommandFailed",
    "Directives",
    "ExecResult",
    "LineSplitter",
    "Piece",
    "parse_directive",
    "run",
    "wrap",
]

#: What starts a directive line.
MARKER = "::pipes-bus::"
#: The kinds of report a directive can make.
DIRECTIVE_KINDS = ("log", "progress", "custom", "materialization", "check")
#: The most characters one ``output`` event carries, as with output capture: a longer line
#: goes out in pieces this size, and a directive must fit in one.
LINE_PIECE = OUTPUT_PIECE

# Exit statuses of a command that could not be started, as a shell gives them.
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
# exec's status when the command succeeded but its report could not be delivered (as
# `pipes-bus run`'s "the bus could not be reached").
# Signals passed on to the command. After SIGTERM or SIGHUP (or a cancel), whatever is
# still running when the grace is over gets SIGKILL; an interrupt is only passed on.
_PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_ESCALATED = (signal.SIGTERM, signal.SIGHUP)
_READ = 65536
Stream = Literal["stdout", "stderr"]
# A warning quotes at most this much of what was wrong (a bad value can be huge).
_PROBLEM_CHARS = 300


def wrap(
    command: Sequence[str], *, python: str = sys.executable, label: str | None = None
) -> list[str]:
    """``command`` run under ``pipes-bus exec``: the argv a launcher starts instead."""
    options = ["--label", label] if label is not None else []
    return [python, "-m", "pipes_bus", "exec", *options, "--", *command]


@dataclass(frozen=True)
class ExecResult:
    """How ``exec`` ends: exit with ``status``, or, if ``signal`` is set, end by that signal
    (a cancelled exec ends as a SIGTERM'd worker does)."""

    status: int
    signal: int | None = None


# --- lines ------------------------------------------------------------------------------


class Piece(NamedTuple):
    """A whole line (``first`` and ``last``), or a piece of a longer one. ``text`` keeps the
    line's newline, so the pieces of a stream joined are the stream."""

    text: str
    first: bool
    last: bool


class LineSplitter:
    """Text in, lines out: each line whole, or in pieces of at most ``limit`` characters.

    Each character is copied a bounded number of times, so the cost is linear in the text
    however long a line is.
    """

    def __init__(self, limit: int = LINE_PIECE) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._first = True

    def feed(self, text: str) -> list[Piece]:
        """The lines and pieces that ``text`` completes."""
        out: list[Piece] = []
        pos, end_of_text = 0, len(text)
        while pos < end_of_text:
            newline = text.find("\n", pos)
            end = end_of_text if newline < 0 else newline + 1
            while pos < end:
                take = min(self.limit - self._size, end - pos)
                self._parts.append(text[pos : pos + take])
                self._size += take
                pos += take
                if self._size == self.limit and not (pos == end and newline >= 0):
                    out.append(self._take(last=False))
            if newline >= 0:
                out.append(self._take(last=True))
        return out

    def finish(self) -> list[Piece]:
        """The last line, if the text did not end with a newline."""
        return [self._take(last=True)] if self._size else []

    def _take(self, *, last: bool) -> Piece:
        piece = Piece("".join(self._parts), self._first, last)
        self._parts, self._size, self._first = [], 0, last
        return piece


# --- directives ---------------------------------------------------------------------------
# One struct per kind. Their fields are exactly the keyword arguments of the Worker method
# that makes the report (a test pins it), so a directive reads like the Python call.


class _Directive(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class LogDirective(_Directive):
    """``{"kind": "log", "message": ..., "level": "info", "fields": {}}``: a log record."""

    message: str
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    fields: dict[str, str | int | float | bool | None] = {}


class ProgressDirective(_Directive):
    """The arguments of ``Worker.report_progress``."""

    current: int | float
    total: int | float | None = None
    unit: str | None = None
    label: str | None = None


class CustomDirective(_Directive):
    """The arguments of ``Worker.report_custom_message``."""

    payload: Any = None


class MaterializationDirective(_Directive):
    """The arguments of ``Worker.report_materialization``."""

    asset_key: str | None = None
    metadata: dict[str, Any] = {}
    data_version: str | None = None


class CheckDirective(_Directive):
    """The arguments of ``Worker.report_check``."""

    check_name: str
    passed: bool
    asset_key: str | None = None
    severity: Literal["warn", "error"] = "error"
    metadata: dict[str, Any] = {}


_KINDS: dict[str, type[_Directive]] = {
    "log": LogDirective,
    "progress": ProgressDirective,
    "custom": CustomDirective,
    "materialization": MaterializationDirective,
    "check": CheckDirective,
}
#: The Worker method each kind but ``log`` calls (a log goes out as the record itself).
REPORT_METHODS: dict[type[_Directive], str] = {
    ProgressDirective: "report_progress",
    CustomDirective: "report_custom_message",
    MaterializationDirective: "report_materialization",
    CheckDirective: "report_check",
}


def parse_directive(line: str) -> _Directive | str:
    """The directive on ``line`` (without its newline), or what is wrong with it."""
    from pipes_bus._wire.limits import MAX_NESTING, json_too_deep

    body = line[len(MARKER) :].encode("utf-8")
    if json_too_deep(body):
        return f"it is nested deeper than {MAX_NESTING} levels of arrays and objects"
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        return f"it is not JSON ({exc})"
    if not isinstance(value, dict):
        return f"it is not a JSON object but {_json_type(value)}"
    kind = value.pop("kind", None)
    if not isinstance(kind, str) or kind not in _KINDS:
        known = ", ".join(DIRECTIVE_KINDS)
        if kind is None:
            return f'it has no "kind"; give one of {known}'
        return f"its kind {_clip(repr(kind))} is none of {known}"
    struct = _KINDS[kind]
    try:
        return msgspec.convert(value, struct)
    except msgspec.ValidationError as exc:
        return (
            f"its {kind} fields are wrong ({_clip(str(exc))}); "
            f"a {kind} takes {', '.join(struct.__struct_fields__)}"
        )


class Directives:
    """Turns ``::pipes-bus::{JSON}`` lines into a worker's reports.

    :meth:`apply` makes the report and returns None, or returns one sentence saying why the
    line is not a valid directive (and reports nothing). It never raises for what the line
    holds: a directive is input from the program, and any program may print anything.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def apply(self, line: str) -> str | None:
        """Make the report ``line`` asks for; None, or why it is not a valid directive."""
        from pipes_bus._errors import ConfigurationError, EncodeError

        directive = parse_directive(line)
        if isinstance(directive, str):
            return directive
        try:
            if isinstance(directive, LogDirective):
                self._log(directive)
            else:
                report = getattr(self._worker, REPORT_METHODS[type(directive)])
                report(**msgspec.structs.asdict(directive))
        except (EncodeError, ConfigurationError) as exc:
            return _clip(str(exc))
        return None

    def _log(self, directive: LogDirective) -> None:
        from pipes_bus._wire.schema import Log

        worker = self._worker
        worker._emit(
            Log(
                time=time.time(),
                message=directive.message,
                level=directive.level,
                logger=worker.log.name,
                fields=dict(directive.fields),
            )
        )


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line, whatever the program printed
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 1] + "…"


# --- carrying the output ------------------------------------------------------------------


class _Carrier:
    """Carries one child's stdout and stderr into the worker's stream, a thread per stream."""

    def __init__(self, worker: Worker, *, echo: bool, directives: bool) -> None:
        self._worker = worker
        self._emit = worker._emit
        self._echo = echo
        self._directives = Directives(worker) if directives else None
        self._carrying = True
        self._lock = threading.Lock()
        self._finished = False
        self._threads: list[threading.Thread] = []

    def start(self, stdout: int, stderr: int) -> None:
        streams: tuple[tuple[int, Stream, int], ...] = (
            (stdout, "stdout", 1),
            (stderr, "stderr", 2),
        )
        for fd, name, echo_to in streams:
            thread = threading.Thread(
                target=self._pump,
                args=(fd, name, echo_to if self._echo else None),
                daemon=True,
                name=f"pipes-bus-exec-{name}",
            )
            thread.start()
            self._threads.append(thread)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for both streams to end; then stop carrying, whatever is
        left (a process that left the group may hold a pipe open for ever)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._finished = True

    def _pump(self, fd: int, stream: Stream, echo_to: int | None) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        lines = LineSplitter()
        number = 0
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while not self._finished:
                data = pipe.read(_READ)
                if not data:
                    break
                if echo_to is not None:
                    try:
                        _echo(echo_to, data)
                    except OSError:  # exec's own stdout is gone: the bus still gets it all
                        echo_to = None
                for piece in lines.feed(decoder.decode(data)):
                    number += piece.first
                    self._piece(stream, number, piece)
        for piece in [*lines.feed(decoder.decode(b"", final=True)), *lines.finish()]:
            number += piece.first
            self._piece(stream, number, piece)

    def _piece(self, stream: Stream, number: int, piece: Piece) -> None:
        if self._finished or not self._carrying:
            return
        problem = None
        if self._directives is not None and piece.first and piece.text.startswith(MARKER):
            if piece.last:
                problem = self._directive(piece.text)
                if problem is None:
                    return
            else:
                problem = f"it is longer than {LINE_PIECE} characters"
        self._output(stream, piece.text)
        if problem is not None:
            self._warn(
                f"{stream} line {number} is not a valid pipes-bus directive, so it was kept "
                f"as output: {problem}",
                stream=stream,
                line=number,
            )

    def _directive(self, text: str) -> str | None:
        from pipes_bus._errors import PipesBusError

        line = text[:-1] if text.endswith("\n") else text
        line = line[:-1] if line.endswith("\r") else line
        assert self._directives is not None
        try:
            return self._directives.apply(line)
        except PipesBusError as exc:  # the store failed, not the directive
            self._lost(exc)
            return None

    def _output(self, stream: Stream, text: str) -> None:
        from pipes_bus._errors import MessageTooLargeError, PipesBusError
        from pipes_bus._wire.schema import Output

        try:
            self._emit(Output(time=time.time(), stream=stream, text=text))
        except MessageTooLargeError as exc:
            # The session allows smaller messages than a piece: split further, drop nothing.
            half = len(text) // 2
            if half == 0:
                self._lost(exc)
                return
            self._output(stream, text[:half])
            self._output(stream, text[half:])
        except PipesBusError as exc:
            self._lost(exc)

    def _warn(self, message: str, **fields: Any) -> None:
        from pipes_bus._errors import PipesBusError
        from pipes_bus._wire.schema import Log

        log = self._worker.log
        record = Log(
            time=time.time(), message=message, level="warning", logger=log.name, fields=fields
        )
        try:
            self._emit(record)
        except PipesBusError as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        with self._lock:
            if not self._carrying:
                return
            self._carrying = False
        notice = (
            "pipes-bus: the command's output and reports no longer reach the bus "
            f"({_clip(str(exc))}); its output still goes to exec's stdout and stderr\n"
        )
        with contextlib.suppress(OSError):
            _echo(2, notice.encode())


def _echo(fd: int, data: bytes) -> None:
    # All of it, even to a stream another process made non-blocking (as Node.js does).
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


# --- the child ------------------------------------------------------------------------------


class _Signals:
    """SIGTERM, SIGINT and SIGHUP while exec runs: each passed on to the child's process
    group at once, and a byte on a pipe that wakes the main loop (a signal handler must not
    take a lock the main thread may hold, as setting a threading.Event would)."""

    def __init__(self) -> None:
        self.group: int | None = None
        self.received: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def handling(self) -> Iterator[_Signals]:
        for sig in _PASSED_ON:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self.group is not None:
            self.signal_group(signum)
        self.wake()

    def start(self, group: int) -> None:
        """The child has started: pass on what came before, and whatever comes."""
        self.group = group
        for signum in self.received:
            self.signal_group(signum)

    def signal_group(self, signum: int) -> None:
        if self.group is not None:
            signal_group(self.group, signum)

    def group_alive(self) -> bool:
        return self.group is not None and group_alive(self.group)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full already: the loop wakes anyway
            os.write(self._wake_w, b"!")

    def wait(self, timeout: float | None) -> None:
        """Sleep until woken, or ``timeout`` seconds."""
        select.select([self._wake_r], [], [], timeout)
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass


def _not_started(name: str, exc: OSError) -> CommandFailed:
    if isinstance(exc, FileNotFoundError):
        where = "" if os.sep in name else " on $PATH"
        failure = CommandFailed(f"Cannot run {name!r}: no such command{where}.", EXIT_NOT_FOUND)
    elif isinstance(exc, PermissionError):
        failure = CommandFailed(
            f"Cannot run {name!r}: permission denied (is it an executable file?).",
            EXIT_NOT_EXECUTABLE,
        )
    else:
        failure = CommandFailed(f"Cannot run {name!r}: {exc.strerror}.", EXIT_NOT_EXECUTABLE)
    failure.__cause__ = exc
    return failure


def _outcome(name: str, returncode: int) -> CommandFailed | None:
    if returncode == 0:
        return None
    if returncode > 0:
        return CommandFailed(f"{name} exited with status {returncode}", returncode)
    number = -returncode
    try:
        signame = f" ({signal.Signals(number).name})"
    except ValueError:
        signame = ""
    return CommandFailed(f"{name} died of signal {number}{signame}", 128 + number)


def _session_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment exec's writer and the command get: the session's, without output
    capture, which exec does itself (a captured echo would be carried twice)."""
    from pipes_bus._errors import NotInSessionError
    from pipes_bus._wire.bootstrap import SESSION_ENV, decode_params, encode_params

    environ = dict(env)
    if not environ.get(SESSION_ENV):
        raise NotInSessionError(
            f"{SESSION_ENV} is not set: pipes-bus exec runs COMMAND as a writer of the "
            "session in its environment, and there is none. Start it under a session, e.g. "
            "`pipes-bus run -- pipes-bus exec -- COMMAND`, or with a session's env."
        )
    params = decode_params(environ)
    if params.capture_output:
        params = msgspec.structs.replace(params, capture_output=False)
        environ[SESSION_ENV] = encode_params(params)
    return environ


def run(
    command: Sequence[str],
    *,
    label: str | None = None,
    grace: float = 10.0,
    echo: bool = True,
    directives: bool = True,
    env: Mapping[str, str] | None = None,
) -> ExecResult:
    """Run ``command`` as a writer of the session in ``env`` (default: this process's
    environment), carrying its output and directives; how exec must end.

    Raises :class:`~pipes_bus.NotInSessionError` outside a session, and what
    ``open_worker`` raises when the bus cannot be used; the command is not started then.
    """
    from pipes_bus._errors import PipesBusError
    from pipes_bus._worker.api import open_worker

    if not command:
        raise ValueError("command is empty")
    environ = _session_env(os.environ if env is None else env)
    signals = _Signals()
    with signals.handling():
        worker = open_worker(label=label, on_cancel="flag", env=environ)
        try:
            failure, result = _supervise(
                worker,
                list(command),
                signals,
                env=environ,
                grace=grace,
                echo=echo,
                directives=directives,
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                worker.close(exc)
            raise
        try:
            worker.close(failure)
        except PipesBusError as exc:
            print(f"pipes-bus: {_clip(str(exc))}", file=sys.stderr)
            if result == ExecResult(0):
                return ExecResult(EXIT_BUS)
    return result


def _supervise(
    worker: Worker,
    command: list[str],
    signals: _Signals,
    *,
    env: dict[str, str],
    grace: float,
    echo: bool,
    directives: bool,
) -> tuple[BaseException | None, ExecResult]:
    """Start the command, carry it, stop it when asked; (what ``closed`` carries, the end)."""
    name = command[0]
    try:
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            # A group of its own: a stop reaches everything it started, and nothing else.
            start_new_session=True,
        )
    except OSError as exc:
        failure = _not_started(name, exc)
        print(f"pipes-bus: {failure}", file=sys.stderr)
        return failure, ExecResult(failure.status)
    assert child.stdout is not None and child.stderr is not None
    carrier = _Carrier(worker, echo=echo, directives=directives)
    carrier.start(os.dup(child.stdout.fileno()), os.dup(child.stderr.fileno()))
    child.stdout.close()
    child.stderr.close()
    signals.start(child.pid)
    exited = threading.Event()

    def wait_for_exit() -> None:
        child.wait()
        exited.set()
        signals.wake()

    _thread(wait_for_exit, "pipes-bus-exec-wait")
    _thread(lambda: _watch_cancel(worker, exited, signals.wake), "pipes-bus-exec-cancel")
    cancel: CancelRequest | None = None
    kill_at: float | None = None  # when the group gets SIGKILL, once a stop has begun
    seen = 0  # signals looked at
    try:
        while not exited.is_set():
            if cancel is None and worker.cancelled is not None:
                cancel = worker.cancelled
                signals.signal_group(signal.SIGTERM)
                kill_at = kill_at or time.monotonic() + grace
            for signum in signals.received[seen:]:
                seen += 1
                if signum in _ESCALATED and kill_at is None:
                    kill_at = time.monotonic() + grace
            timeout = None
            if kill_at is not None:
                timeout = kill_at - time.monotonic()
                if timeout <= 0:
                    signals.signal_group(signal.SIGKILL)
                    kill_at = timeout = None  # now only the exit is left to wait for
            signals.wait(timeout)
    finally:
        if not exited.is_set():  # exec itself failed: never leave the command behind
            signals.signal_group(signal.SIGKILL)
        _stop_leftovers(signals, grace)
        carrier.join(timeout=5.0)
    returncode = child.wait()
    if cancel is not None:
        import pipes_bus  # the face: `closed` names pipes_bus.Cancelled

        stopped = pipes_bus.Cancelled(cancel.reason, cancel.by, cancel)
        return stopped, ExecResult(128 + signal.SIGTERM, signal.SIGTERM)
    outcome = _outcome(name, returncode)
    return outcome, ExecResult(outcome.status if outcome else 0)


def _stop_leftovers(signals: _Signals, grace: float) -> None:
    """What the command left running in its group gets SIGTERM, and SIGKILL after
    ``grace``: nothing it started outlives exec."""
    if not signals.group_alive():
        return
    signals.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while signals.group_alive() and time.monotonic() < deadline:
        signals.wait(0.02)
    if signals.group_alive():
        signals.signal_group(signal.SIGKILL)


def _watch_cancel(worker: Worker, exited: threading.Event, wake: Callable[[], None]) -> None:
    # The worker's control thread sets cancel_requested; wake the main loop when it does.
    while not exited.is_set():
        if worker.cancel_requested.wait(1.0):
            wake()
            return


def _thread(target: Callable[[], Any], name: str) -> None:
    threading.Thread(target=target, name=name, daemon=True).start()
