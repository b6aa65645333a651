"""``pipes-bus``: run a command as a worker, follow a session, list sessions."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, PipesBusError, StoreError
from pipes_bus._log.items import SessionCursor
from pipes_bus._log.schedule import Schedule
from pipes_bus._orchestrator.core import DEFAULT_SETTLE
from pipes_bus._orchestrator.result import EXIT_INCOMPLETE, EXIT_UNDELIVERABLE, EXIT_WORKER_FAILED
from pipes_bus._orchestrator.session import BUS_ENV, Session, default_bus_url
from pipes_bus._redact import printable, redact
from pipes_bus._version import __version__
from pipes_bus._wire.bootstrap import KEY_ENV, make_context, parse_key

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_STORE = 6

EXIT_CODES = f"""\
exit status:
  N     the command's own non-zero status (128+S if it died of signal S)
  0     the command exited 0, every writer that opened closed cleanly, nothing was lost
  {EXIT_USAGE}     bad arguments or configuration
  {EXIT_WORKER_FAILED}     a writer closed with an exception
  {EXIT_INCOMPLETE}     a writer opened but never closed (crashed, killed, or still running)
  {EXIT_UNDELIVERABLE}     some data on the bus could not be delivered (corrupt, missing, forged)
  {EXIT_STORE}     the bus could not be reached, or could not be read to the end
Anything other than 0 comes with a one-line reason on stderr.
"""


def _storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"--storage-option {pair!r} is not KEY=VALUE.")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def _context(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    where = "--context"
    if text.startswith("@"):
        where = f"--context {text}"
        try:
            text = Path(text[1:]).read_bytes().decode("utf-8")
        except OSError as exc:
            raise ConfigurationError(f"{where}: cannot read the file: {exc}") from exc
        except UnicodeDecodeError:
            raise ConfigurationError(f"{where}: the file is not UTF-8 text (JSON).") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigurationError('--context must be a JSON object, e.g. \'{"asset_keys": ["a"]}\'.')
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipes-bus",
        description="Run work anywhere and hear back from it through shared storage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            f"Default bus: ${BUS_ENV} (now {os.environ[BUS_ENV]})"
            if os.environ.get(BUS_ENV)
            else f"Default bus: {default_bus_url()} (set ${BUS_ENV} to change it)"
        ),
    )
    parser.add_argument("--version", action="version", version=f"pipes-bus {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--storage-option",
            "-o",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an fsspec storage option (VALUE is parsed as JSON if it can be); repeatable",
        )
        p.add_argument("--quiet", "-q", action="store_true", help="print only problems")

    run = commands.add_parser(
        "run",
        help="run a command as a worker and follow what it reports",
        description="Run COMMAND under a new session and follow everything it reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES
        + '\nexample:\n  pipes-bus run --context \'{"asset_keys": ["orders"]}\' -- python job.py',
    )
    run.add_argument(
        "--bus", metavar="URL", help=f"bus URL (default: ${BUS_ENV} or a local directory)"
    )
    run.add_argument(
        "--context", metavar="JSON|@FILE", help="the run context as JSON, or @file.json"
    )
    run.add_argument(
        "--events", metavar="PATH|-", help="append every event as a JSON line (- is stdout)"
    )
    run.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for writers still open after the command exits (default 10)",
    )
    run.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE,
        metavar="SECONDS",
        help="after the command exits, look for writers once more this much later, so that "
        f"one that opens just after the exit is followed too (default {DEFAULT_SETTLE:g})",
    )
    run.add_argument(
        "--injector",
        choices=("auto", "env", "object", "argv"),
        default="auto",
        help="how the context reaches the worker (default auto: env if small, else an object)",
    )
    run.add_argument(
        "--linger",
        type=float,
        metavar="SECONDS",
        help="how long the worker batches messages before publishing a chunk "
        "(default: the store's, e.g. 0.01 for a directory, 0.25 for S3)",
    )
    run.add_argument(
        "--poll",
        type=float,
        metavar="SECONDS",
        help="fastest interval at which each stream is probed while data flows "
        "(default: the store's). --linger 0.02 --poll 0.02 is the low-latency setting",
    )
    run.add_argument(
        "--sign",
        action="store_true",
        help="sign every chunk with a per-session key (HMAC-SHA256) that reaches the worker "
        "only through its environment; forged or altered chunks are rejected",
    )
    run.add_argument(
        "--capture-output",
        action="store_true",
        help="have the worker carry its stdout/stderr through the bus",
    )
    run.add_argument(
        "--session-id", metavar="ID", help="use this session id instead of a fresh one"
    )
    run.add_argument(
        "--cursor",
        metavar="FILE",
        help="save the position here after every batch, so `tail --cursor FILE` can take over",
    )
    common(run)
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")

    tail = commands.add_parser(
        "tail",
        help="follow a session from another terminal",
        description="Follow a session until every writer has closed (Ctrl-C to stop).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="URL is the session's location: the bus URL plus the session id,\n"
        "or just the session id on the default bus.",
    )
    tail.add_argument("url", metavar="URL")
    tail.add_argument(
        "--events", metavar="PATH|-", help="append every event as a JSON line (- is stdout)"
    )
    tail.add_argument(
        "--cursor",
        metavar="FILE",
        help="save the position here after every batch and resume from it if it exists; "
        "events already in --events FILE are not written again",
    )
    tail.add_argument(
        "--resume",
        action="store_true",
        help="resume from --cursor FILE (default FILE: .pipes-bus-cursor-SESSION.json)",
    )
    tail.add_argument("--once", action="store_true", help="print what is there now and stop")
    common(tail)

    ls = commands.add_parser("ls", help="list the sessions on a bus")
    ls.add_argument("url", nargs="?", metavar="URL", help="bus URL (default: the default bus)")
    ls.add_argument("--json", action="store_true", help="one JSON object per session")
    common(ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipes-bus`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "tail":
            return _tail(args)
        return _ls(args)
    except ConfigurationError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except PipesBusError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_STORE
    except OSError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pipes-bus: interrupted", file=sys.stderr)
        return 130


def _follow(
    session: Session, view: Any, sink: Any, done: Any, grace: float | None, cursor: Path | None
) -> None:
    for batch in session.batches(done=done, grace=grace):
        view.batch(batch)
        if sink is not None:
            sink.add_batch(batch)
            sink.flush()
        view.tick()
        if cursor is not None:
            _save_cursor(cursor, session.checkpoint())


def _load_cursor(path: Path, session_id: str) -> SessionCursor | None:
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


def _run(args: argparse.Namespace) -> int:
    from pipes_bus._orchestrator.process import LocalProcess, StopPolicy
    from pipes_bus.cli._events import EventSink
    from pipes_bus.cli._view import make_view

    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigurationError(
            "Give a command to run after --, e.g. pipes-bus run -- python job.py"
        )
    session = Session(
        args.bus,
        context=make_context(_context(args.context), what="--context"),
        storage_options=_storage_options(args.storage_option),
        injector=args.injector,
        session_id=args.session_id,
        capture_output=args.capture_output,
        sign=args.sign,
        writer_settings={"linger": args.linger} if args.linger is not None else None,
        poll=Schedule(minimum=args.poll) if args.poll is not None else None,
        collect=False,
        grace=args.grace,
        settle=args.settle,
    )
    require_shared(session)
    # The command's own stdout and stderr reach this terminal already: captured copies of
    # them are not printed twice (they are in --events and the result).
    view = make_view(quiet=args.quiet, show_output=False)
    sink = EventSink(args.events) if args.events else None
    cursor = Path(args.cursor) if args.cursor else None
    process = LocalProcess(
        [*command, *session.args],
        env={**os.environ, **session.env},
        policy=StopPolicy(grace=args.grace),
    )
    view.start(f"session {session.id} on {session.bus}")
    stops = _Stops(process, view)
    session._sleep = stops.sleep
    try:
        with stops.handling():
            try:
                _follow(session, view, sink, stops.done, None, cursor)
            except StoreError as exc:
                # The bus failed; the command may still be working. Its status decides.
                session.result.bus_error = str(exc)
                view.line(f"pipes-bus: {exc}; waiting for the command to exit", "red")
                while not stops.done():
                    stops.sleep(1.0)
    finally:
        if process.poll() is None or process.group_alive():
            process.stop_now()  # never leave the command behind, whatever happened here
        session.result.exit_code = process.wait()
        session.result.stopped = stops.reason
        if sink is not None:
            sink.close()
        session.close()
    result = session.result
    view.finish(result, session.url)
    return result.exit_status()


class _Stops:
    """Ctrl-C and SIGTERM while `run` follows a command.

    The first Ctrl-C passes SIGINT on to the command's process group and starts the grace;
    the next one, or the end of the grace, terminates the group (SIGTERM, then SIGKILL);
    a third kills it at once. SIGTERM and SIGHUP are passed on the same way.
    """

    def __init__(self, process: Any, view: Any) -> None:
        self.process = process
        self.view = view
        self.reason: str | None = None
        self.interrupts = 0
        self._wake = threading.Event()
        self._notes: list[str] = []

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        signals = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        process = self.process
        grace = process.policy.grace
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts == 1:
                self.reason = "pipes-bus passed on an interrupt"
                process.request_stop("interrupt", signal.SIGINT)
                self._notes.append(
                    f"interrupted: passed it on to the command; waiting up to {grace:g} s "
                    "for it to finish (Ctrl-C again to stop it now)"
                )
            elif self.interrupts == 2:
                process.terminate()
                self._notes.append(
                    "stopping the command: SIGTERM to its process group, SIGKILL in "
                    f"{process.policy.kill_after:g} s (Ctrl-C again to kill it now)"
                )
            else:
                process.kill()
                self._notes.append("killing the command's process group")
        else:
            name = signal.Signals(signum).name
            self.reason = self.reason or f"pipes-bus received {name}"
            process.request_stop(name, signum)
            self._notes.append(f"received {name}: passed it on to the command")
        self._wake.set()

    def done(self) -> bool:
        """Whether the command has exited; carries out any escalation that is due."""
        while self._notes:
            self.view.line(f"pipes-bus: {self._notes.pop(0)}", "yellow")
        self.process.tick()
        return bool(self.process.poll() is not None)

    def sleep(self, seconds: float) -> None:
        due = self.process.next_deadline()
        self._wake.wait(seconds if due is None else min(seconds, due))
        self._wake.clear()


def require_shared(session: Session) -> None:
    """Refuse a bus the launched command cannot reach (one in this process's memory)."""
    if not session.transport.capabilities.shared:
        raise ConfigurationError(
            f"The bus {session.bus} lives in this process's memory: a command launched from "
            "here cannot reach it, and every message would be lost. Use a directory (the "
            "default) or an object store."
        )


def _split_session_url(url: str) -> tuple[str, str]:
    if "/" not in url.replace("://", ""):
        return default_bus_url(), url
    bus, _, session = url.rstrip("/").rpartition("/")
    return bus, session


def _tail(args: argparse.Namespace) -> int:
    from pipes_bus.cli._events import EventSink
    from pipes_bus.cli._view import make_view

    bus, session_id = _split_session_url(args.url)
    cursor_path = Path(args.cursor) if args.cursor else None
    if args.resume and cursor_path is None:
        cursor_path = Path(f".pipes-bus-cursor-{session_id}.json")
    from pipes_bus._wire.keys import validate_id
    from pipes_bus.transports import open_transport

    validate_id("session id", session_id)
    transport = open_transport(bus, **_storage_options(args.storage_option))
    cursor = _load_cursor(cursor_path, session_id) if cursor_path is not None else None
    if not transport.list(session_id):
        raise ConfigurationError(f"There is no session at {transport.describe(session_id)}.")
    secret = os.environ.get(KEY_ENV)
    key = parse_key(secret) if secret else None
    session = Session.attach(transport, session_id, cursor=cursor, key=key, collect=False)
    view = make_view(quiet=args.quiet)
    sink = EventSink(args.events, resume=cursor_path is not None) if args.events else None
    view.start(f"following session {session_id} on {bus}")
    polls = [0]

    def done() -> bool:
        polls[0] += 1
        if args.once:
            return True
        return bool(session.writers) and not session.open_writers

    try:
        _follow(session, view, sink, done, 0.0, cursor_path)
    finally:
        if sink is not None:
            sink.close()
    result = session.result
    view.finish(result, transport.describe(session_id))
    if args.once:
        return EXIT_UNDELIVERABLE if result.faults else 0
    return result.exit_status()


def _ls(args: argparse.Namespace) -> int:
    from pipes_bus._wire.keys import is_id, streams_prefix
    from pipes_bus.transports import open_transport

    bus = args.url or default_bus_url()
    transport = open_transport(bus, **_storage_options(args.storage_option))
    rows: list[dict[str, Any]] = []
    for name in transport.list(""):
        if not is_id(name):
            continue
        writers = [w for w in transport.list(streams_prefix(name)) if is_id(w)]
        started = None
        parts = name.split("-")
        if len(parts) > 2 and parts[0] == "s":
            try:
                started = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(int(parts[1], 16) / 1000)
                )
            except ValueError:
                started = None
        rows.append({"session": name, "started": started, "writers": len(writers)})
    rows.sort(key=lambda r: (r["started"] or "", r["session"]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print(f"no sessions on {bus}", file=sys.stderr)
    else:
        width = max(len(r["session"]) for r in rows)
        print(f"{'SESSION':{width}}  {'STARTED':19}  WRITERS")
        for row in rows:
            print(f"{row['session']:{width}}  {row['started'] or '-':19}  {row['writers']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
