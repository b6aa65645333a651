"""Running unmodified Dagster Pipes workers under a pipes_bus session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipes_bus.integrations.dagster._source import DagsterPipesSource
from pipes_bus.orchestrator import Session, SessionResult


def write_script(tmp_path: Path, body: str, name: str = "worker.py") -> Path:
    """Write a worker program (dedented) and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_dagster_worker(
    tmp_path: Path,
    body: str,
    *,
    bus: str | None = None,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    grace: float = 30.0,
    include_stdio: bool = False,
    timeout: float = 120.0,
    **session_options: Any,
) -> tuple[SessionResult, DagsterPipesSource]:
    """Run ``body`` as an unmodified Dagster Pipes worker under a pipes_bus session.

    The session gets its default sources, the Dagster Pipes one among them (with
    ``include_stdio``, the session captures output), the worker gets ``session.env``, and the
    session is followed until the process exits and every writer has closed. A worker still
    running after ``timeout`` seconds is killed and the test fails.
    """
    script = write_script(tmp_path, body)
    session = Session(
        bus or str(tmp_path / "bus"), grace=grace, capture_output=include_stdio, **session_options
    )
    try:
        [source] = [s for s in session.open().sources if isinstance(s, DagsterPipesSource)]
        launch = {**os.environ, **(env or {}), **session.env}
        process = subprocess.Popen([sys.executable, str(script), *(args or [])], env=launch)
        deadline = time.monotonic() + timeout
        try:
            session.wait(done=lambda: process.poll() is not None or time.monotonic() > deadline)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
                raise AssertionError(f"the worker was still running after {timeout} s")
            session.result.exit_code = process.wait()
    finally:
        session.close()
    return session.result, source


def payloads(result: SessionResult) -> list[Any]:
    """Every custom payload, in delivery order."""
    return [e.message.payload for e in result.custom_messages]  # type: ignore[union-attr]
