"""Launching work under a session, on any launcher, and following it to its end.

:func:`launch` is the whole job for the API; ``pipes-bus run`` drives the same pieces
with its own view and signal handling:

- :func:`start` builds the :class:`~pipes_bus.launchers.LaunchSpec` from the session,
  launches, records the handle in ``{session}/launch.json`` and returns a control;
- a control has the interface of a local process (``poll``, ``request_stop``,
  ``terminate``, ``kill``, ``tick``, ``stop_now``, ``wait``): for ``subprocess`` it is the
  :class:`~pipes_bus._orchestrator.process.LocalProcess` itself; for a platform it is a
  :class:`JobControl`, which polls the job's state at most once a second, forwards its
  output into the session as ``output`` events (one writer of its own, bounded), and
  escalates a stop from the platform's polite cancel to its forced one after the grace.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, LaunchError, PipesBusError
from pipes_bus._log.items import Event, StreamFault
from pipes_bus._log.writer import ChunkWriter
from pipes_bus._orchestrator.lifecycle import record_end
from pipes_bus._orchestrator.process import StopPolicy
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._orchestrator.session import Session, open_session
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.schema import ExceptionInfo, Log, Opened, Output, WriterInfo
from pipes_bus.launchers._base import Job, JobStatus, Launcher, LaunchSpec
from pipes_bus.launchers._registry import make_launcher
from pipes_bus.launchers._subprocess import SubprocessJob

__all__ = ["JobControl", "launch", "run_subprocess", "start"]

# What the platform's output may add to a session: lines over MAX_LINE are split, and
# once MAX_OUTPUT bytes were forwarded the rest is counted and reported, not forwarded.
MAX_LINE = 16 * 1024
MAX_OUTPUT = 8 * 1024 * 1024
STATUS_EVERY = 1.0  # seconds between two queries of the platform


def require_shared(session: Session) -> None:
    """Refuse a bus the launched work cannot reach (one in this process's memory)."""
    if not session.transport.capabilities.shared:
        raise ConfigurationError(
            f"The bus {session.bus} lives in this process's memory: a command launched from "
            "here cannot reach it, and every message would be lost. Use a directory (the "
            "default) or an object store."
        )


def _bus_dir(session: Session) -> str | None:
    root = getattr(session.transport, "root", None)
    return os.fspath(root) if root is not None and os.path.isdir(root) else None


def start(
    session: Session,
    launcher: Launcher,
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    grace: float = 10.0,
    kill_after: float = 5.0,
) -> Any:
    """Launch ``command`` under ``session`` with ``launcher``; record the handle; return the
    control that follows and stops it (see the module doc)."""
    require_shared(session)
    spec = LaunchSpec(
        command=[*command, *session.args],
        env={**(env or {}), **session.env},
        session=session.id,
        bus=session.bus,
        bus_dir=_bus_dir(session),
        cwd=cwd,
        grace=grace,
    )
    try:
        job = launcher.launch(spec)
    except LaunchError as exc:
        # The session goes on record as failed to launch (pipes-bus ls, gc), then the error.
        session.result.launch_error = str(exc)
        with contextlib.suppress(PipesBusError):
            record_end(session.transport, session.result)
        raise
    handle = msgspec.structs.replace(job.handle, launched=time.time())
    with contextlib.suppress(PipesBusError):  # the work runs: a missing record costs a takeover
        session.transport.put_if_absent(_keys.launch_key(session.id), msgspec.json.encode(handle))
    session.result.launch = handle
    if isinstance(job, SubprocessJob):
        return job.process
    return JobControl(session, job, grace=grace, kill_after=kill_after)


class OutputForwarder:
    """The platform's output as ``output`` events of one writer of the session's, bounded."""

    def __init__(self, session: Session, launcher: str) -> None:
        writer = f"{launcher}-output-{secrets.token_hex(3)}"
        self._writer = ChunkWriter(session.transport, session.id, writer, key=session._key)
        info = WriterInfo(
            id=writer,
            label=f"{launcher} output",
            pid=os.getpid(),
            host=socket.gethostname(),
            library="pipes_bus launcher",
        )
        self._writer.write(Opened(time=time.time(), info=info))
        self.sent = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def forward(self, lines: list[tuple[str, str]]) -> None:
        now = time.time()
        for stream, text in lines:
            if self.sent >= MAX_OUTPUT:
                self.dropped_lines += 1
                self.dropped_bytes += len(text)
                continue
            # As a worker's captured output: pieces of the stream, the newline included.
            line = text + "\n"
            for start in range(0, len(line), MAX_LINE):
                piece = line[start : start + MAX_LINE]
                self._writer.write(Output(time=now, stream=_stream(stream), text=piece))
                self.sent += len(piece)

    def close(self, status: JobStatus | None) -> None:
        if self.dropped_lines:
            text = (
                f"{self.dropped_lines} more lines ({self.dropped_bytes} characters) of the "
                f"platform's output were not forwarded: over the {MAX_OUTPUT}-byte limit"
            )
            self._writer.write(Log(time=time.time(), message=text, level="warning"))
        error = None
        if status is not None and status.state == "unknown":
            error = ExceptionInfo(type="JobLost", message=status.reason or "the job is unknown")
        with contextlib.suppress(PipesBusError):
            self._writer.close(error)

    @property
    def count(self) -> int:
        return self._writer.written


def _stream(name: str) -> Any:
    return "stderr" if name == "stderr" else "stdout"


class JobControl:
    """A platform job driven like a local process (see the module doc)."""

    def __init__(
        self,
        session: Session,
        job: Job,
        *,
        grace: float,
        kill_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self._clock = clock
        self.policy = StopPolicy(grace, kill_after)
        self.stopping: str | None = None
        self.killed = False
        self._escalate_at: float | None = None
        self._polite_at: float | None = None
        self._status = JobStatus("pending")
        self._asked = 0.0
        self._session = session
        self._forwarder = (
            OutputForwarder(session, job.handle.launcher) if job.forwards_output else None
        )

    @property
    def pid(self) -> str:
        return self.job.handle.job_id

    # --- state --------------------------------------------------------------------------

    def status(self) -> JobStatus:
        """The job's state, queried at most once a second; forwards new output too."""
        now = self._clock()
        if not self._status.finished and now - self._asked >= STATUS_EVERY:
            self._asked = now
            try:
                self._status = self.job.status()
            except Exception as exc:  # a platform error is a state, never a crash here
                self._status = JobStatus("running", reason=f"could not ask the platform: {exc}")
            self._pump()
        return self._status

    def _pump(self) -> None:
        if self._forwarder is None:
            return
        try:
            lines = self.job.output()
        except Exception as exc:
            lines = [("stderr", f"pipes-bus: could not read the job's output: {exc}")]
        if lines:
            self._forwarder.forward(lines)

    def poll(self) -> int | None:
        """The exit status once the job has finished (its output writer is closed first,
        so that the session sees every writer closed), else None."""
        status = self.status()
        if not status.finished:
            return None
        self.finish()
        return status.exit_code if status.exit_code is not None else 1

    def group_alive(self) -> bool:
        return not self.status().finished

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                self.finish()
                return 1
            time.sleep(0.2)
        return code

    def finish(self) -> None:
        """Forward the last output and close the output writer (once)."""
        if self._forwarder is not None:
            self._pump()
            self._forwarder.close(self._status)
            self._forwarder = None
        result = self._session.result
        status = self._status
        if status.finished:
            result.job_state = status.state + (f" ({status.reason})" if status.reason else "")
        with contextlib.suppress(Exception):
            self.job.close()

    # --- stopping -----------------------------------------------------------------------
    # A stop follows the session's cancel request, which the work hears on the bus: it gets
    # ``grace`` seconds to stop by itself (a worker that checks a flag, closes cleanly),
    # then the platform's polite cancel, then after ``kill_after`` its forced one.

    def request_stop(self, reason: str, signum: int = signal.SIGTERM) -> None:
        if self.stopping is None:
            self.stopping = reason
            self._escalate_at = self._clock() + self.policy.grace
        else:
            self.terminate()

    def terminate(self) -> None:
        """The platform's polite cancel now; its forced one ``kill_after`` seconds later."""
        if self.stopping is None:
            self.stopping = "terminate"
        if self._polite_at is None:
            self._polite_at = self._clock()
            self._escalate_at = self._polite_at + self.policy.kill_after
            self._stop(force=False)
        else:
            self.kill()

    def kill(self) -> None:
        """The platform's forced cancel now."""
        self.killed = True
        self._escalate_at = None
        self._stop(force=True)

    def _stop(self, *, force: bool) -> None:
        with contextlib.suppress(Exception):
            self.job.stop(force=force)
        self._asked = 0.0  # ask again at the next poll

    def tick(self) -> None:
        if self._escalate_at is not None and self._clock() >= self._escalate_at:
            self._escalate_at = None
            if self.group_alive():
                self.terminate()

    def next_deadline(self) -> float | None:
        if self._escalate_at is None:
            return None
        return max(0.0, self._escalate_at - self._clock())

    def stop_now(self, timeout: float | None = None) -> int:
        if not self.status().finished:
            self.terminate()
            self.wait(self.policy.kill_after if timeout is None else timeout)
            if not self.status().finished:
                self.kill()
                self.wait(30)
        self.finish()
        code = self.poll()
        return 1 if code is None else code  # a job that outlived its stop did not succeed

    def describe_stop(self) -> str | None:
        if self.stopping is None:
            return None
        how = (
            "killed"
            if self.killed
            else "stopped by the platform"
            if self._polite_at is not None
            else "asked to stop"
        )
        return f"the {self.job.handle.launcher} job was {how} ({self.stopping})"


def launch(
    command: Sequence[str],
    *,
    launcher: str | Launcher = "subprocess",
    options: Mapping[str, Any] | None = None,
    bus: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    on_event: Callable[[Event | StreamFault], None] | None = None,
    on_start: Callable[[Session, Any], None] | None = None,
    **session_options: Any,
) -> SessionResult:
    """Launch ``command`` with ``launcher`` (a name, with ``options``, or a Launcher) under a
    new session, follow it to completion, and return the result.

    ``env`` is added to the work's environment under the session's own variables.
    ``session_options`` go to :class:`~pipes_bus.orchestrator.Session`. With ``timeout``,
    the session is cancelled that many seconds after launch, and the job stopped after its
    grace. If following fails or is interrupted, the job is stopped (the platform's own
    cancel, then its forced one) before the error goes on: nothing is left running.
    """
    chosen = make_launcher(launcher, **(options or {})) if isinstance(launcher, str) else launcher
    with open_session(bus, **session_options) as session:
        if on_event is not None:
            session.on_event(on_event)
        control = start(
            session,
            chosen,
            command,
            env=env,
            cwd=os.fspath(cwd) if cwd is not None else None,
            grace=session.grace,
        )
        deadline = None if timeout is None else time.monotonic() + timeout

        def done() -> bool:
            nonlocal deadline
            if deadline is not None and time.monotonic() >= deadline:
                deadline = None
                session.cancel(f"timed out after {timeout:g} s", source="timeout")
                control.request_stop("timeout")
            if (
                session.result.cancelled is not None
                and isinstance(control, JobControl)
                and control.stopping is None
            ):
                control.request_stop("cancel")  # the platform's own cancel, after a grace
            control.tick()
            return control.poll() is not None

        try:
            if on_start is not None:
                on_start(session, getattr(control, "popen", control))
            session.wait(done=done)
        except BaseException:
            control.stop_now()
            raise
        finally:
            code = control.wait()
            session.result.exit_code = code
            session.result.stopped = control.describe_stop()
        return session.result


def run_subprocess(
    command: Sequence[str],
    *,
    bus: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    on_event: Callable[[Event | StreamFault], None] | None = None,
    on_start: Callable[[Session, Any], None] | None = None,
    **session_options: Any,
) -> SessionResult:
    """Launch ``command`` here under a new session, follow it to completion, return the
    result: :func:`launch` with the ``subprocess`` launcher. ``on_start`` gets the session
    and the ``subprocess.Popen``. The command runs in a process group of its own; if
    following fails or is interrupted, the whole group is stopped (SIGTERM, then SIGKILL)."""
    return launch(
        command,
        bus=bus,
        env=env,
        cwd=cwd,
        on_event=on_event,
        on_start=on_start,
        **session_options,
    )
