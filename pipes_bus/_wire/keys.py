"""Where things live on a bus, and which names are allowed there.

    {bus}/{session}/session.json                      the session's manifest
    {bus}/{session}/context.json                      optional: a large context
    {bus}/{session}/streams/{writer}/{chunk:020d}     the chunks of one writer's stream
    {bus}/{session}/beats/{ms:013d}-{h|w}-{writer}    a writer's sign of life (h) or news (w)
    {bus}/{session}/control/cancel                    a cancel request, for every writer
    {bus}/{session}/launch.json                       how the work was launched
    {bus}/{session}/result.json                       how the session ended

Every object is written once (put-if-absent). Beats are named by the writer's clock in
milliseconds, so one listing after the last beat seen finds every new one, whatever the
number of writers.

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
    "BEATS",
    "beat_key",
    "beats_prefix",
    "cancel_key",
    "chunk_key",
    "chunk_number",
    "is_id",
    "launch_key",
    "manifest_key",
    "new_id",
    "parse_beat",
    "result_key",
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
BEATS = "beats"


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


def cancel_key(session: str) -> str:
    """Key of the session's cancel request."""
    return f"{session}/control/cancel"


def launch_key(session: str) -> str:
    """Key of the record of how the session's work was launched."""
    return f"{session}/launch.json"


def result_key(session: str) -> str:
    """Key of the record of how the session ended."""
    return f"{session}/result.json"


def beats_prefix(session: str) -> str:
    """Where the session's writers leave beats."""
    return f"{session}/{BEATS}"


def beat_key(session: str, writer: str, millis: int, *, wake: bool = False) -> str:
    """Key of a beat ``writer`` leaves at ``millis`` (its clock, ms since the epoch): a
    heartbeat (``h``), or news after a quiet spell (``w``: probe its stream now)."""
    return f"{session}/{BEATS}/{max(0, millis):013d}-{'w' if wake else 'h'}-{writer}"


def parse_beat(name: str) -> tuple[int, bool, str] | None:
    """(ms, wake, writer) of a beat's name in the beats folder, or None if it is not one."""
    stamp, kind, writer = name[:13], name[13:16], name[16:]
    if not stamp.isdigit() or kind not in ("-h-", "-w-") or not is_id(writer):
        return None
    return int(stamp), kind == "-w-", writer
