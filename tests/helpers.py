"""What the tests share: one fake clock, deadline polling, the CLI, and worker scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipes_bus.orchestrator import SessionResult, run_subprocess

__all__ = [
    "FakeClock",
    "WaitUntil",
    "cli",
    "cli_command",
    "detach",
    "payloads",
    "run_script",
    "wait_until",
    "write_script",
]


class FakeClock:
    """A monotonic clock that moves only when told to, or when code sleeps on it.

    Call it for the time; :meth:`advance` moves it; :meth:`sleep` (injectable wherever
    code sleeps) moves it by the time slept and counts the sleeps. Thread-safe.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.calls = 0
        self.slept = 0

    def __call__(self) -> float:
        with self._lock:
            self.calls += 1
            return self._now

    @property
    def now(self) -> float:
        """The current time (without counting a call)."""
        return self._now

    @now.setter
    def now(self, value: float) -> None:
        with self._lock:
            self._now = value

    def advance(self, seconds: float) -> None:
        """Move the clock on."""
        with self._lock:
            self._now += seconds

    def sleep(self, seconds: float) -> None:
        """Sleep on this clock: it moves on at once."""
        with self._lock:
            self.slept += 1
            self._now += seconds


WaitUntil = Callable[[Callable[[], bool]], None]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition with a deadline (never a fixed sleep); fail if it never holds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        pause.wait(0.001)


def cli_command(*args: str) -> list[str]:
    """The argv of the real ``pipes-bus`` command (for Popen)."""
    return [sys.executable, "-m", "pipes_bus", *args]


def cli(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real ``pipes-bus`` command to its end; text output captured."""
    kw.setdefault("timeout", 120)
    return subprocess.run(
        cli_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


def write_script(tmp_path: Path, body: str, name: str = "worker.py") -> Path:
    """Write a worker program (dedented) and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_script(
    tmp_path: Path, body: str, *, bus: str | None = None, **options: Any
) -> SessionResult:
    """Run ``body`` as ``python worker.py`` in a fresh session on a directory bus."""
    script = write_script(tmp_path, body)
    options.setdefault("grace", 30.0)
    return run_subprocess(
        [sys.executable, str(script)], bus=bus or str(tmp_path / "bus"), **options
    )


def detach(command: list[str], env: dict[str, str], log: Path | None = None) -> int:
    """Start ``command`` as a process that is not a child of this one (a middle process
    starts it in a session of its own and exits, so init adopts it); its pid. Its output
    goes to ``log``, if given."""
    launcher = (
        "import subprocess, sys, json\n"
        "cmd, env, log = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]\n"
        "out = open(log, 'ab') if log else subprocess.DEVNULL\n"
        "p = subprocess.Popen(cmd, env=env, start_new_session=True,\n"
        "    stdin=subprocess.DEVNULL, stdout=out, stderr=out)\n"
        "print(p.pid)\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            launcher,
            json.dumps(command),
            json.dumps({**os.environ, **env}),
            str(log or ""),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout)


def payloads(result: SessionResult) -> list[Any]:
    """Every custom payload, in delivery order."""
    return [e.message.payload for e in result.custom_messages]  # type: ignore[union-attr]
