"""Where things live on a bus, and which names are allowed there.

    {bus}/{session}/session.json                      the session's manifest
    {bus}/{session}/context.json                      optional: a large context
    {bus}/{session}/streams/{writer}/{chunk:020d}     the chunks of one writer's stream

Session and writer ids are single path segments of ``[A-Za-z0-9._-]``, so no id can
reach outside its session's prefix.
"""

from __future__ import annotations

import os
import re
import secrets
import time

from pipes_bus._errors import ConfigurationError

__all__ = [
    "chunk_key",
    "chunk_number",
    "is_id",
    "manifest_key",
    "new_id",
    "sanitize",
    "stream_prefix",
    "streams_prefix",
    "validate_id",
]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
CHUNK_DIGITS = 20
_CHUNK = re.compile(r"[0-9]{20}")


def validate_id(what: str, value: str) -> str:
    """Return ``value`` if it is a safe id, else raise ConfigurationError."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise ConfigurationError(
            f"{what} {value!r} is not a valid id: use 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit, with no '..'."
        )
    return value


def sanitize(value: str, *, limit: int = 48) -> str:
    """Turn any text (a label such as 'rank 3') into a safe id fragment."""
    cleaned = _DOTS.sub(".", _UNSAFE.sub("-", value)).strip(".-_")
    return cleaned[:limit] or "x"


def new_id(prefix: str, label: str | None = None) -> str:
    """A fresh id that sorts by creation time: prefix, time, pid, random, label."""
    stamp = f"{int(time.time() * 1000):011x}"
    parts = [prefix, stamp, f"{os.getpid()}", secrets.token_hex(4)]
    if label:
        parts.append(sanitize(label))
    return "-".join(parts)


def manifest_key(session: str) -> str:
    """Key of the session's manifest, its first object."""
    return f"{session}/session.json"


def streams_prefix(session: str) -> str:
    """Key prefix under which every writer of a session has its stream."""
    return f"{session}/streams"


def stream_prefix(session: str, writer: str) -> str:
    """Key prefix of one writer's stream."""
    return f"{session}/streams/{writer}"


def chunk_key(session: str, writer: str, chunk: int) -> str:
    """Key of chunk number ``chunk`` in ``writer``'s stream."""
    return f"{session}/streams/{writer}/{chunk:020d}"


def chunk_number(name: str) -> int | None:
    """The chunk number a stream entry's name encodes, or None if it is not a chunk."""
    return int(name) if _CHUNK.fullmatch(name) else None


def is_id(value: str) -> bool:
    """Whether ``value`` is a valid session or writer id."""
    return bool(_ID.fullmatch(value)) and ".." not in value
