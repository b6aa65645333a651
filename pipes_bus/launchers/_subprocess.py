"""``subprocess``: the command on this host, in a process group of its own (the default)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pipes_bus._errors import LaunchError
from pipes_bus._groups import signal_group
from pipes_bus._orchestrator.process import LocalProcess, StopPolicy
from pipes_bus.launchers._base import Job, JobStatus, Launcher, LaunchHandle, LaunchSpec, as_env

__all__ = ["SubprocessJob", "SubprocessLauncher"]


class SubprocessJob(Job):
    """A local command. Its output goes straight to this process's terminal."""

    forwards_output = False

    def __init__(self, process: LocalProcess) -> None:
        self.process = process
        self.handle = LaunchHandle(launcher="subprocess", job_id=str(process.pid), where=_host())

    def status(self) -> JobStatus:
        code = self.process.poll()
        if code is None:
            return JobStatus("running")
        if self.process.stopping is not None and code != 0:
            return JobStatus("cancelled", _status(code), self.process.describe_stop())
        return JobStatus("succeeded" if code == 0 else "failed", _status(code))

    def stop(self, *, force: bool = False) -> None:
        if force:
            self.process.terminate()
        else:
            self.process.request_stop("cancel")


class SubprocessLauncher(Launcher):
    """Runs the command here, with this process's environment under the session's.

    Options: ``env`` (more variables), ``cwd`` (its working directory), ``kill_after``
    (seconds from SIGTERM to SIGKILL, 5).
    """

    name = "subprocess"

    def __init__(self, *, env: Any = None, cwd: str | None = None, kill_after: float = 5.0) -> None:
        self.env = as_env(env)
        self.cwd = cwd
        self.kill_after = float(kill_after)

    def launch(self, spec: LaunchSpec) -> SubprocessJob:
        process = LocalProcess(
            list(spec.command),
            env={**os.environ, **self.env, **spec.env},
            cwd=self.cwd or spec.cwd,
            policy=StopPolicy(grace=spec.grace, kill_after=self.kill_after),
        )
        return SubprocessJob(process)

    def attach(self, handle: LaunchHandle) -> Job:
        if handle.where != _host():
            raise LaunchError(
                f"The command ran on {handle.where}, not here: only the bus can reach it "
                "(pipes-bus cancel)."
            )
        return _Pid(handle)


class _Pid(Job):
    """A local command launched by another process: only whether its pid still runs."""

    def __init__(self, handle: LaunchHandle) -> None:
        self.handle = handle

    def status(self) -> JobStatus:
        try:
            os.kill(int(self.handle.job_id), 0)
        except ProcessLookupError:
            return JobStatus("unknown", reason="it has exited; its status went to its parent")
        except (PermissionError, ValueError):
            pass
        return JobStatus("running")

    def stop(self, *, force: bool = False) -> None:
        import signal

        with contextlib.suppress(ValueError):  # not a process id: nothing of ours to stop
            signal_group(int(self.handle.job_id), signal.SIGKILL if force else signal.SIGTERM)


def _status(code: int) -> int:
    """A shell's view of an exit: the code, or 128+S for a process ended by signal S."""
    return 128 - code if code < 0 else code


def _host() -> str:
    import socket

    return socket.gethostname()
