"""``pipes-bus tail``: follow a session from anywhere, or take it over from a cursor."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pipes_bus._errors import ConfigurationError
from pipes_bus._orchestrator.result import EXIT_UNDELIVERABLE
from pipes_bus._orchestrator.session import Session
from pipes_bus._wire.keys import validate_id
from pipes_bus.cli._common import (
    follow,
    load_cursor,
    session_key,
    split_session_url,
    storage_options,
)

__all__ = ["tail"]


def tail(args: argparse.Namespace) -> int:
    """Follow the session; its exit status (with ``--once``: 5 if anything was corrupt)."""
    from pipes_bus.cli._events import EventSink
    from pipes_bus.cli._view import make_view
    from pipes_bus.transports import open_transport

    bus, session_id = split_session_url(args.url)
    validate_id("session id", session_id)
    cursor_path = Path(args.cursor) if args.cursor else None
    if args.resume and cursor_path is None:
        cursor_path = Path(f".pipes-bus-cursor-{session_id}.json")
    if args.liveness is not None and not args.liveness > 0:
        raise ConfigurationError(f"--liveness must be seconds above 0, not {args.liveness!r}.")
    transport = open_transport(bus, **storage_options(args.storage_option))
    cursor = load_cursor(cursor_path, session_id) if cursor_path is not None else None
    if not transport.list(session_id):
        raise ConfigurationError(f"There is no session at {transport.describe(session_id)}.")
    session = Session.attach(
        transport,
        session_id,
        cursor=cursor,
        key=session_key(),
        collect=False,
        liveness=args.liveness,
    )
    view = make_view(quiet=args.quiet)
    sink = EventSink(args.events, resume=cursor_path is not None) if args.events else None
    view.start(f"following session {session_id} on {bus}")
    job = _Launched(transport, session_id, view)

    def done() -> bool:
        if args.once:
            return True
        if job.finished():  # the work a launcher started has ended: what it wrote is all
            return not session.core.running_writers
        return bool(session.writers) and not session.core.running_writers

    try:
        follow(session, view, sink, done, 0.0, cursor_path)
    finally:
        if sink is not None:
            sink.close()
        session.close()
    result = session.result
    job.outcome(result)
    view.finish(result, transport.describe(session_id))
    if args.once:
        return EXIT_UNDELIVERABLE if result.faults else 0
    return result.exit_status()


class _Launched:
    """The work a launcher recorded in the session, if any: a follower that takes over
    reports its state and ends when it has ended, with its exit status."""

    def __init__(self, transport: Any, session: str, view: Any) -> None:
        from pipes_bus._orchestrator.lifecycle import attach_launched, read_launch

        self.job = None
        self.status: Any = None
        self._asked = 0.0
        handle = read_launch(transport, session)
        if handle is not None and handle.launcher != "subprocess":
            self.job, line = attach_launched(handle)
            view.line(f"pipes-bus: {line}", "cyan")

    def finished(self) -> bool:
        if self.job is None:
            return False
        if self.status is None or (
            not self.status.finished and time.monotonic() - self._asked >= 1.0
        ):
            self._asked = time.monotonic()
            try:
                self.status = self.job.status()
            except Exception:  # the platform could not be asked: follow the bus alone
                return False
        return bool(self.status.finished)

    def outcome(self, result: Any) -> None:
        if self.job is None:
            return
        if self.finished() and self.status is not None:
            result.exit_code = self.status.exit_code
            result.job_state = self.status.state + (
                f" ({self.status.reason})" if self.status.reason else ""
            )
        self.job.close()
