"""Run a command as a worker in a fresh session and return what it reported."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._reader import Event, StreamFault
from ._session import Session, SessionResult, open_session

__all__ = ["run_subprocess"]


def run_subprocess(
    command: Sequence[str],
    *,
    bus: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    on_event: Callable[[Event | StreamFault], None] | None = None,
    on_start: Callable[[Session, subprocess.Popen[bytes]], None] | None = None,
    **session_options: Any,
) -> SessionResult:
    """Launch ``command`` under a new session, follow it to completion, return the result.

    ``env`` is added to this process's environment; the session's own variables are
    added last. ``session_options`` go to :class:`~pipes_bus.orchestrator.Session`
    (context, storage_options, injector, grace, capture_output, ...).
    """
    with open_session(bus, **session_options) as session:
        if on_event is not None:
            session.on_event(on_event)
        launch_env = {**os.environ, **(env or {}), **session.env}
        process = subprocess.Popen([*command, *session.args], env=launch_env, cwd=cwd)
        try:
            if on_start is not None:
                on_start(session, process)
            session.wait(done=lambda: process.poll() is not None)
        except BaseException:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            raise
        finally:
            session.result.exit_code = process.wait()
        return session.result
