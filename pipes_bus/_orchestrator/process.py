"""A launched local command, and the rules for stopping it.

The command runs in a process group of its own, so that a stop reaches everything it
started (``bash -c``, a training script's data loaders, ...) and nothing else. Stopping
escalates on a bounded timeline: the polite signal first (SIGINT for an interrupt, SIGTERM
otherwise), then, once ``grace`` has run out or on a second request, SIGTERM to the whole
group, and ``kill_after`` seconds later SIGKILL. Nothing it started outlives the stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from pipes_bus._errors import ConfigurationError
from pipes_bus._groups import group_alive, signal_group

__all__ = ["LocalProcess", "StopPolicy"]


class StopPolicy:
    """When to escalate: ``grace`` seconds after the polite signal, then ``kill_after``."""

    def __init__(self, grace: float = 10.0, kill_after: float = 5.0) -> None:
        self.grace = grace
        self.kill_after = kill_after


class LocalProcess:
    """A command started in its own process group, and stopped with all it started."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        policy: StopPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = list(command)
        self.policy = policy or StopPolicy()
        self._clock = clock
        try:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                self.command,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # A group of its own: a stop reaches its children too, and the terminal's
                # Ctrl-C reaches only pipes_bus, which decides what to pass on.
                start_new_session=True,
            )
        except OSError as exc:
            raise ConfigurationError(f"Cannot start {self.command[0]!r}: {exc}") from exc
        self.pid = self.popen.pid
        self.stopping: str | None = None  # why a stop began ("interrupt", "terminate", ...)
        self._escalate_at: float | None = None
        self._kill_at: float | None = None
        self.killed = False

    # --- state ------------------------------------------------------------------------------

    def poll(self) -> int | None:
        """The exit status (negative: the signal that ended it), or None while it runs."""
        return self.popen.poll()

    def group_alive(self) -> bool:
        """Whether any process of the command's group still runs (its own, or a child)."""
        return group_alive(self.pid)

    def wait(self) -> int:
        """Wait for the command itself to exit and return its status."""
        return self.popen.wait()

    # --- stopping -----------------------------------------------------------------------------

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of the command's group."""
        signal_group(self.pid, signum)

    def request_stop(self, reason: str, signum: int = signal.SIGTERM) -> None:
        """Begin stopping: the first request sends ``signum`` and starts the grace; the next
        one terminates the group at once."""
        if self.stopping is None:
            self.stopping = reason
            self.signal_group(signum)
            self._escalate_at = self._clock() + self.policy.grace
        else:
            self.terminate()

    def terminate(self) -> None:
        """SIGTERM to the whole group now; SIGKILL ``kill_after`` seconds later if need be."""
        if self.stopping is None:
            self.stopping = "terminate"
        if self._kill_at is None:
            self.signal_group(signal.SIGTERM)
            self._kill_at = self._clock() + self.policy.kill_after
            self._escalate_at = None

    def kill(self) -> None:
        """SIGKILL to the whole group now."""
        self.killed = True
        self._kill_at = None
        self.signal_group(signal.SIGKILL)

    def tick(self) -> None:
        """Carry out whatever escalation is due by now (call it at least once a second)."""
        now = self._clock()
        if self._escalate_at is not None and now >= self._escalate_at:
            if self.group_alive():
                self.terminate()
            else:
                self._escalate_at = None
        if self._kill_at is not None and now >= self._kill_at:
            if self.group_alive():
                self.kill()
            else:
                self._kill_at = None

    def next_deadline(self) -> float | None:
        """Seconds until the next escalation step is due, if one is pending."""
        due = [t for t in (self._escalate_at, self._kill_at) if t is not None]
        return max(0.0, min(due) - self._clock()) if due else None

    def stop_now(self, timeout: float | None = None) -> int:
        """Terminate, wait up to ``kill_after`` (or ``timeout``), kill what is left; the status."""
        if self.poll() is None or self.group_alive():
            self.terminate()
            deadline = self._clock() + (self.policy.kill_after if timeout is None else timeout)
            while self._clock() < deadline and (self.poll() is None or self.group_alive()):
                time.sleep(0.02)
            if self.poll() is None or self.group_alive():
                self.kill()
        return self.wait()

    def describe_stop(self) -> str | None:
        """How the command was stopped, for the session's reason; None if it was not."""
        if self.stopping is None:
            return None
        how = "killed" if self.killed else "stopped"
        return f"the command was {how} ({self.stopping})"


def default_signal_for(reason: str) -> int:
    """The polite signal for a stop: SIGINT for an interrupt, SIGTERM for anything else."""
    return signal.SIGINT if reason == "interrupt" else signal.SIGTERM


if sys.platform == "win32":  # pragma: no cover - process groups are POSIX
    raise ImportError("pipes_bus launches local commands on POSIX systems only")
