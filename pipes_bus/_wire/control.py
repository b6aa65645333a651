"""The control objects: what travels beside the streams and is not a message.

Each is a small JSON object written once (put-if-absent) at a key of
:mod:`pipes_bus._wire.keys`: the session's :class:`Manifest` (the orchestrator's first
write), a :class:`CancelRequest` (for every writer), each writer's :class:`Beat`, and the
:class:`SessionEnd` (how it ended). Readers refuse any larger than ``MAX_CONTROL_BYTES``.
"""

import hashlib
import hmac
from typing import Any, TypeVar

import msgspec

__all__ = [
    "MAX_CONTROL_BYTES",
    "Beat",
    "CancelRequest",
    "Manifest",
    "SessionEnd",
    "sign",
    "verify",
]

# The largest control object a reader accepts (they are tiny; anything more is not ours).
MAX_CONTROL_BYTES = 64 * 1024


class Manifest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A session's record of itself: when it was made (epoch s), by whom (``by``:
    user@host and pid), to run what (``command``, credentials redacted), the digest of its
    context, and whether its chunks are signed."""

    format: str = "pipes-bus-session"
    protocol: str = ""
    session: str = ""
    created: float = 0.0
    by: str = ""
    command: str | None = None
    context_sha256: str = ""
    signed: bool = False


class CancelRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Asks every writer of a session to stop. ``by`` says who asked (user@host and pid),
    ``source`` how (``api``, ``cli``, ``interrupt``, ``timeout``), ``at`` when (epoch s);
    ``mac`` signs it in a signed session."""

    reason: str = ""
    by: str = ""
    source: str = "api"
    at: float = 0.0
    mac: str | None = None

    def describe(self) -> str:
        """``cancelled by WHO (HOW): REASON``, for a reason line."""
        how = f" ({self.source})" if self.source and self.source != "api" else ""
        why = f": {self.reason}" if self.reason else ""
        return f"cancelled by {self.by or 'someone'}{how}{why}"


class Beat(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A writer's sign of life: where its stream is (``seq`` and ``chunk`` published so
    far), when it wrote this (its clock), and ``wake`` when it follows new data after a
    quiet spell. ``mac`` signs it in a signed session."""

    writer: str
    seq: int
    chunk: int
    time: float
    wake: bool = False
    mac: str | None = None


class SessionEnd(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How a session ended, as its follower saw it: ``state`` is one of succeeded, failed,
    cancelled, lost; ``status`` the exit status; ``reason`` the one-line reason."""

    state: str
    status: int
    reason: str | None = None
    ended: float = 0.0
    writers: int = 0
    messages: int = 0


_Signed = TypeVar("_Signed", CancelRequest, Beat)
_ENCODE = msgspec.json.Encoder()


def sign(key: bytes, value: _Signed) -> _Signed:
    """``value`` (a cancel request or a beat) with its ``mac`` set, for a signed session."""
    unsigned = msgspec.structs.replace(value, mac=None)
    mac = hmac.new(key, _ENCODE.encode(unsigned), hashlib.sha256).hexdigest()
    return msgspec.structs.replace(value, mac=mac)


def verify(key: bytes | None, value: Any) -> bool:
    """Whether ``value`` may be trusted: anything in an unsigned session (``key`` None),
    only what the session's key signed in a signed one."""
    if key is None:
        return True
    if not isinstance(value.mac, str):
        return False
    return hmac.compare_digest(sign(key, value).mac or "", value.mac)
