"""Run a command as a worker in a fresh session and return what it reported."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipes_bus._errors import ConfigurationError
from pipes_bus._log.items import Event, StreamFault
from pipes_bus._orchestrator.process import LocalProcess, StopPolicy
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._orchestrator.session import Session, open_session

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
    (context, storage_options, injector, grace, capture_output, ...). The command runs in
    a process group of its own; if following it fails or is interrupted, the whole group
    is stopped (SIGTERM, then SIGKILL) before the error goes on.
    """
    with open_session(bus, **session_options) as session:
        if not session.transport.capabilities.shared:
            raise ConfigurationError(
                f"The bus {session.bus} lives in this process's memory: a command launched "
                "from here cannot reach it. Use a directory or an object store."
            )
        if on_event is not None:
            session.on_event(on_event)
        process = LocalProcess(
            [*command, *session.args],
            env={**os.environ, **(env or {}), **session.env},
            cwd=cwd,
            policy=StopPolicy(grace=session.grace),
        )
        try:
            if on_start is not None:
                on_start(session, process.popen)
            session.wait(done=lambda: process.poll() is not None)
        except BaseException:
            process.stop_now()
            raise
        finally:
            session.result.exit_code = process.wait()
        return session.result
