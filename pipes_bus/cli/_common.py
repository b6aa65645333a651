"""What the commands share: options, session locations, cursors, following a session."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError
from pipes_bus._log.items import SessionCursor
from pipes_bus._orchestrator.session import Session, default_bus_url
from pipes_bus._wire.bootstrap import KEY_ENV, parse_key

__all__ = [
    "bus_url",
    "follow",
    "load_cursor",
    "session_key",
    "split_session_url",
    "storage_options",
]


def key_values(pairs: Sequence[str], flag: str = "--storage-option") -> dict[str, Any]:
    """``KEY=VALUE`` options, each VALUE parsed as JSON if it can be."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"{flag} {pair!r} is not KEY=VALUE.")
        try:
            options[name] = json.loads(value)
        except (ValueError, RecursionError):
            options[name] = value
    return options


def storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` storage options."""
    return key_values(pairs)


def bus_url(bus: str | None) -> str:
    """The bus a command works on: ``bus``, else the default; an empty one is an error."""
    if bus is None:
        return default_bus_url()
    if not bus.strip():
        raise ConfigurationError(
            "The bus URL is empty; give a directory or a URL like s3://bucket/prefix, "
            f"or leave it out for the default bus ({default_bus_url()})."
        )
    return bus


def split_session_url(url: str, bus: str | None = None) -> tuple[str, str]:
    """(bus, session id) of a session's location, or of a bare id on ``bus`` (else the
    default bus)."""
    if "/" not in url.replace("://", ""):
        return bus_url(bus), url
    if bus is not None:
        raise ConfigurationError(
            f"Give the session as an id with --bus, or as a location, not both ({url!r})."
        )
    where, _, session = url.rstrip("/").rpartition("/")
    return where, session


def session_key() -> bytes | None:
    """The signing key of a signed session, from $PIPES_BUS_KEY, if it is set."""
    secret = os.environ.get(KEY_ENV)
    return parse_key(secret) if secret else None


def load_cursor(path: Path, session_id: str) -> SessionCursor | None:
    """The cursor saved at ``path``, None if there is none; a clear error if it is not one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"--cursor {path}: cannot read it: {exc}") from exc
    try:
        cursor = SessionCursor.loads(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConfigurationError(
            f"--cursor {path} is not a pipes_bus cursor ({exc}); delete it to start over."
        ) from exc
    if cursor.session != session_id:
        raise ConfigurationError(
            f"--cursor {path} is for session {cursor.session!r}, not {session_id!r}."
        )
    return cursor


def _save_cursor(path: Path, cursor: SessionCursor) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cursor.dumps())
    os.replace(tmp, path)


def follow(
    session: Session, view: Any, sink: Any, done: Any, grace: float | None, cursor: Path | None
) -> None:
    """Follow ``session`` to its end: show each batch, append it to the events file, save
    the cursor after it."""
    for batch in session.batches(done=done, grace=grace):
        view.batch(batch)
        if sink is not None:
            sink.add_batch(batch)
            sink.flush()
        view.tick(session.result)
        if cursor is not None:
            _save_cursor(cursor, session.checkpoint())
