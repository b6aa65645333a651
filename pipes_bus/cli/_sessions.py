"""``pipes-bus ls``, ``cancel`` and ``gc``: the sessions on a bus, from their records."""

from __future__ import annotations

import argparse
import json
import sys
import time

import msgspec

from pipes_bus._errors import ConfigurationError
from pipes_bus._orchestrator.lifecycle import (
    SessionInfo,
    cancel_session,
    delete_session,
    list_sessions,
    parse_duration,
    session_info,
    stop_launched,
)
from pipes_bus._redact import printable
from pipes_bus._wire.keys import validate_id
from pipes_bus.cli._common import bus_url, session_key, split_session_url, storage_options
from pipes_bus.transports import Transport, open_transport

__all__ = ["cancel", "gc", "ls"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _open(args: argparse.Namespace) -> tuple[str, Transport]:
    if args.url is not None and args.bus is not None and args.url != args.bus:
        raise ConfigurationError(f"Two buses given: {args.url!r} and --bus {args.bus!r}.")
    bus = bus_url(args.url if args.url is not None else args.bus)
    return bus, open_transport(bus, **storage_options(args.storage_option))


def ls(args: argparse.Namespace) -> int:
    """List the sessions on the bus with their state and age."""
    bus, transport = _open(args)
    infos = list_sessions(transport)
    now = time.time()
    if args.json:
        for info in infos:
            row = msgspec.to_builtins(info)
            row["age"] = info.age(now)
            print(json.dumps(row))
        return 0
    if not infos:
        print(f"no sessions on {bus}", file=sys.stderr)
        return 0
    width = max(len(i.session) for i in infos)
    print(f"{'SESSION':{width}}  {'STATE':9}  {'CREATED':19}  {'AGE':>4}  WRITERS  REASON")
    for i in infos:
        note = i.reason or i.cancelled or ""
        print(
            f"{i.session:{width}}  {i.state:9}  {_when(i.created):19}  {_age(i.age(now)):>4}  "
            f"{i.writers:7}  {printable(note)[:80]}".rstrip()
        )
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Ask every writer of a session to stop."""
    bus, session_id = split_session_url(args.session, args.bus)
    validate_id("session id", session_id)
    transport = open_transport(bus, **storage_options(args.storage_option))
    info = session_info(transport, session_id)
    where = transport.describe(session_id)
    if info.state == "unknown" and not info.writers:
        raise ConfigurationError(f"There is no session at {where}.")
    if info.finished:
        print(f"session {session_id} already ended ({info.state}); nothing to cancel")
        return 0
    key = session_key()
    if info.signed and key is None:
        raise ConfigurationError(
            f"Session {session_id} is signed: its workers obey only a cancel request signed "
            "with its key. Set PIPES_BUS_KEY to the session's key, or stop it from its "
            "orchestrator (Ctrl-C on pipes-bus run)."
        )
    request = cancel_session(transport, session_id, reason=args.reason or "", source="cli", key=key)
    if not args.quiet:
        print(
            f"session {session_id}: {request.describe()}; its {info.writers} writer(s) stop "
            "at their next look (within 2.5 s on an object store, by default)"
        )
    if info.launch is not None and info.launch.launcher != "subprocess":
        # The platform's own cancel too, for work that does not listen (or never opened).
        done = stop_launched(info.launch, grace=args.grace)
        if not args.quiet:
            print(f"session {session_id}: {done}")
    return 0


def gc(args: argparse.Namespace) -> int:
    """Delete finished sessions older than ``--older-than``; print what and how much."""
    older = parse_duration(args.older_than)
    bus, transport = _open(args)
    now = time.time()
    infos = list_sessions(transport)
    old = [i for i in infos if (i.age(now) or 0.0) >= older and i.created is not None]
    chosen = [i for i in old if i.finished or args.force]
    kept = [i for i in old if not (i.finished or args.force)]
    verb = "would delete" if args.dry_run else "deleted"
    objects = freed = 0
    for info in chosen:
        if args.dry_run:
            count, size = _measure(transport, info)
        else:
            count, size = delete_session(transport, info.session)
        objects += count
        freed += size
        if not args.quiet:
            print(
                f"{verb} {info.session}  {info.state:9}  {_age(info.age(now)):>4}  "
                f"{count} objects  {_size(size)}",
                flush=True,
            )
    print(
        f"{verb} {len(chosen)} session(s) older than {args.older_than} on {bus}: "
        f"{objects} objects, {_size(freed)}"
    )
    if kept:
        names = ", ".join(f"{i.session} ({i.state})" for i in kept[:3])
        more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
        print(
            f"kept {len(kept)} unfinished session(s) older than that: {names}{more}; "
            "--force deletes them too",
            file=sys.stderr,
        )
    return 0


def _measure(transport: Transport, info: SessionInfo) -> tuple[int, int]:
    count = size = 0
    for _, n in transport.walk(info.session):
        count += 1
        size += n
    return count, size
