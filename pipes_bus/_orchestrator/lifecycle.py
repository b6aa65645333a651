"""A session's life on the bus: who made it, whether it was cancelled, how it ended.

Each record is a control object (:mod:`pipes_bus._wire.control`) written once: the
:class:`~pipes_bus._wire.control.Manifest` when the session opens, a
:class:`~pipes_bus._wire.control.CancelRequest` when someone cancels it, the
:class:`~pipes_bus._wire.control.SessionEnd` when its follower finishes. Listing sessions
(``pipes-bus ls``), cancelling one from anywhere (``pipes-bus cancel``) and collecting old
ones (``pipes-bus gc``) need nothing but these records and the store.
"""

from __future__ import annotations

import concurrent.futures
import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, PipesBusError, UnreadableObjectError
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._redact import redact
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.control import (
    MAX_CONTROL_BYTES,
    CancelRequest,
    Manifest,
    SessionEnd,
    sign,
    verify,
)
from pipes_bus.launchers._base import LaunchHandle
from pipes_bus.transports import Transport

__all__ = [
    "SessionInfo",
    "cancel_session",
    "delete_session",
    "list_sessions",
    "read_cancel",
    "record_end",
    "session_info",
    "who",
]

_ENCODE = msgspec.json.Encoder()
# Requests in flight at once when listing or deleting many sessions (each one waits on a
# network round trip on an object store).
_PARALLEL = 16
# The longest command a manifest keeps.
_MAX_COMMAND = 500


def who() -> str:
    """``user@host pid N``: who is acting, for records and reasons."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no such user in a container's passwd
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def command_text(command: Sequence[str] | None) -> str | None:
    """A command as a manifest keeps it: shell-quoted, credentials redacted, bounded."""
    if not command:
        return None
    import shlex

    text = redact(shlex.join(command))
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 3] + "..."


def _get(transport: Transport, key: str) -> bytes | None:
    return transport.get(key, max_size=MAX_CONTROL_BYTES)


def _decode(data: bytes | None, kind: type[Any]) -> Any:
    if data is None:
        return None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.DecodeError, RecursionError):
        return False  # there, but not one of ours


# --- cancelling --------------------------------------------------------------------------


def cancel_session(
    transport: Transport,
    session: str,
    *,
    reason: str = "",
    source: str = "api",
    key: bytes | None = None,
) -> CancelRequest:
    """Ask every writer of ``session`` to stop; the request in force (the first one made).

    In a signed session the request must be signed with the session's ``key``: its
    workers ignore any other.
    """
    _keys.validate_id("session id", session)
    request = CancelRequest(reason=reason, by=who(), source=source, at=time.time())
    if key is not None:
        request = sign(key, request)
    if transport.put_if_absent(_keys.cancel_key(session), _ENCODE.encode(request)):
        return request
    return read_cancel(transport, session, key) or request


def read_cancel(
    transport: Transport, session: str, key: bytes | None = None
) -> CancelRequest | None:
    """The session's cancel request, if it has one its workers obey (as they read it)."""
    try:
        data = _get(transport, _keys.cancel_key(session))
    except UnreadableObjectError:
        data = b""
    request = _decode(data, CancelRequest)
    if request is None:
        return None
    if request is False:
        # Workers treat anything there as a cancel; so does the session.
        return CancelRequest(reason="(the cancel request could not be read)")
    return request if verify(key, request) else None


# --- ending -------------------------------------------------------------------------------


def end_of(result: SessionResult) -> SessionEnd:
    """How ``result`` ended, as the session records it."""
    return SessionEnd(
        state=result.state,
        status=result.exit_status(),
        reason=result.reason(),
        ended=time.time(),
        writers=len(result.writers),
        messages=sum(w.messages for w in result.writers.values()),
    )


def record_end(transport: Transport, result: SessionResult) -> SessionEnd:
    """Record how the session ended (the first record stands: a later follower's is not
    written over it)."""
    end = end_of(result)
    transport.put_if_absent(_keys.result_key(result.session), _ENCODE.encode(end))
    return end


# --- listing --------------------------------------------------------------------------------


class SessionInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the bus says of one session.

    ``state`` is running, succeeded, failed, cancelled or lost, or unknown for a folder with
    no pipes_bus manifest. ``created`` and ``ended`` are epoch seconds; ``status`` and
    ``reason`` are those of its end; ``cancelled`` says who cancelled it and why.
    """

    session: str
    state: str
    created: float | None = None
    ended: float | None = None
    status: int | None = None
    reason: str | None = None
    by: str | None = None
    command: str | None = None
    writers: int = 0
    cancelled: str | None = None
    signed: bool = False
    #: Where its work was launched, if a launcher recorded it.
    launch: LaunchHandle | None = None

    @property
    def finished(self) -> bool:
        """Whether it ended (its follower recorded how)."""
        return self.ended is not None

    def age(self, now: float | None = None) -> float | None:
        """Seconds since it was created, if that is known."""
        if self.created is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.created)


def _created_from_id(session: str) -> float | None:
    # Fresh ids are s-{ms since the epoch, hex}-...
    parts = session.split("-")
    if len(parts) > 2 and parts[0] == "s":
        try:
            return int(parts[1], 16) / 1000
        except ValueError:
            return None
    return None


def read_launch(transport: Transport, session: str) -> LaunchHandle | None:
    """The handle of the session's launched work, if one was recorded and is readable."""
    try:
        data = _get(transport, _keys.launch_key(session))
    except UnreadableObjectError:
        return None
    handle = _decode(data, LaunchHandle)
    return handle or None


def stop_launched(handle: LaunchHandle, *, grace: float = 10.0, force: bool = False) -> str:
    """Give the work ``handle`` names ``grace`` seconds to end (after a cancel request it
    hears on the bus), then ask its platform to stop it (its own cancel); what was done,
    or why it could not be, in a few words. Never raises."""
    from pipes_bus.launchers import make_launcher

    what = f"{handle.launcher} job {handle.job_id}"
    try:
        job = make_launcher(handle.launcher).attach(handle)
    except PipesBusError as exc:
        return f"could not reach the {what}: {exc}"
    try:
        deadline = time.monotonic() + grace
        while not (status := job.status()).finished and time.monotonic() < deadline:
            time.sleep(0.5)
        if status.finished:
            return f"the {what} has ended ({status.state})"
        job.stop(force=force)
        return f"the {what} was still running after {grace:g} s: asked the platform to stop it"
    except Exception as exc:  # a platform's own failure, reported in the line
        return f"could not stop the {what}: {exc}"
    finally:
        job.close()


def attach_launched(handle: LaunchHandle) -> tuple[Any, str]:
    """(the Job ``handle`` names, or None; a line saying where it runs, or why it cannot be
    reached). Never raises."""
    from pipes_bus.launchers import make_launcher

    what = f"{handle.launcher} job {handle.job_id}" + (
        f" at {handle.where}" if handle.where else ""
    )
    try:
        return make_launcher(handle.launcher).attach(handle), f"launched as {what}"
    except PipesBusError as exc:
        return None, f"launched as {what}, which cannot be reached from here: {exc}"


def session_info(transport: Transport, session: str) -> SessionInfo:
    """Read ``session``'s records (five small requests) into a :class:`SessionInfo`."""
    _keys.validate_id("session id", session)
    manifest = _decode(_get(transport, _keys.manifest_key(session)), Manifest)
    launched = read_launch(transport, session)
    end = _decode(_get(transport, _keys.result_key(session)), SessionEnd)
    cancel = read_cancel(transport, session)
    writers = sum(1 for n in transport.list(_keys.streams_prefix(session)) if _keys.is_id(n))
    info = SessionInfo(
        session=session,
        state="running" if manifest else "unknown",
        created=_created_from_id(session),
        writers=writers,
        cancelled=cancel.describe() if cancel is not None else None,
        launch=launched,
    )
    if manifest:
        info.created = manifest.created or info.created
        info.by, info.command, info.signed = manifest.by or None, manifest.command, manifest.signed
    if end:
        info.state, info.ended, info.status, info.reason = (
            end.state,
            end.ended,
            end.status,
            end.reason,
        )
    elif end is False:
        info.reason = f"{transport.describe(_keys.result_key(session))} is not a session end"
    return info


def _each(
    transport: Transport, sessions: Sequence[str], do: Callable[[Transport, str], Any]
) -> Iterator[tuple[str, Any]]:
    """``do(transport, session)`` for each session, a few at a time: (session, result or the
    PipesBusError it raised), in the order given."""
    if len(sessions) <= 1:
        for session in sessions:
            yield session, _attempt(do, transport, session)
        return
    with concurrent.futures.ThreadPoolExecutor(min(_PARALLEL, len(sessions))) as pool:
        yield from zip(
            sessions, pool.map(lambda s: _attempt(do, transport, s), sessions), strict=True
        )


def _attempt(do: Callable[[Transport, str], Any], transport: Transport, session: str) -> Any:
    try:
        return do(transport, session)
    except PipesBusError as exc:
        return exc


def list_sessions(transport: Transport) -> list[SessionInfo]:
    """Every session on the bus, oldest first. A session whose records cannot be read is
    listed with state unknown and the reason."""
    names = [n for n in transport.list("") if _keys.is_id(n)]
    infos = []
    for name, info in _each(transport, names, session_info):
        if isinstance(info, PipesBusError):
            info = SessionInfo(session=name, state="unknown", reason=str(info))
        infos.append(info)
    infos.sort(key=lambda i: (i.created or 0.0, i.session))
    return infos


# --- deleting -------------------------------------------------------------------------------


def delete_session(transport: Transport, session: str) -> tuple[int, int]:
    """Delete every object of ``session``: (objects, bytes) freed."""
    _keys.validate_id("session id", session)
    objects = size = 0
    for key, n in transport.walk(session):
        transport.delete(key)
        objects += 1
        size += n
    return objects, size


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` (or a bare number of seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    scale = units.get(value[-1:])
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0 or seconds == float("inf"):
        raise ConfigurationError(
            f"{text!r} is not a duration: give a number with s, m, h, d or w, e.g. 7d or 12h."
        )
    return seconds
