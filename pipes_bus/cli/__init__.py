"""``pipes-bus``: run a command as a worker, follow a session, list, cancel and collect
sessions. Each command lives in a module of its own (``_run``, ``_tail``, ``_sessions``);
this one holds the parser and the exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

from pipes_bus._errors import ConfigurationError, PipesBusError
from pipes_bus._redact import printable, redact
from pipes_bus._status import (
    EXIT_BUS,
    EXIT_CANCELLED,
    EXIT_INCOMPLETE,
    EXIT_UNDELIVERABLE,
    EXIT_USAGE,
    EXIT_WORKER_FAILED,
)
from pipes_bus._version import __version__

__all__ = ["main"]

# The orchestrator's modules load only for the commands that need them: `pipes-bus exec`
# runs on the worker side, where start-up time counts.

EXIT_CODES = f"""\
exit status:
  N     the command's own non-zero status (128+S if it died of signal S)
  0     the command exited 0, every writer that opened closed cleanly, nothing was lost
  {EXIT_USAGE}     bad arguments or configuration
  {EXIT_WORKER_FAILED}     a writer closed with an exception
  {EXIT_INCOMPLETE}     a writer opened but never closed (crashed, killed, lost, or still running)
  {EXIT_UNDELIVERABLE}     some data on the bus could not be delivered (corrupt, missing, forged)
  {EXIT_BUS}     the bus could not be reached, or could not be read to the end
  {EXIT_CANCELLED}     the session was cancelled (Ctrl-C, --timeout, pipes-bus cancel, the API)
Anything other than 0 comes with a one-line reason on stderr.
"""


def _wrap(text: str) -> str:
    return textwrap.fill(text, 79)


def command_after_dashes(args: argparse.Namespace, example: str) -> list[str]:
    """The command given after ``--``; a usage error, showing ``example``, if there is none."""
    command = list(args.argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigurationError(f"Give a command to run after --, e.g. pipes-bus {example}")
    return command


def require_seconds(args: argparse.Namespace, *names: str) -> None:
    """Each option in ``names`` that was given is 0 seconds or more (not NaN, not negative)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise ConfigurationError(f"--{name} must be seconds (0 or more), not {value!r}.")


def _parser() -> argparse.ArgumentParser:
    from pipes_bus._orchestrator.core import DEFAULT_SETTLE
    from pipes_bus._orchestrator.session import BUS_ENV, default_bus_url

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

    def bus_argument(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", nargs="?", metavar="URL", help="bus URL (default: the default bus)")
        p.add_argument("--bus", metavar="URL", help="bus URL (the same as URL)")

    run = commands.add_parser(
        "run",
        help="run a command as a worker and follow what it reports",
        description="Run COMMAND under a new session and follow everything it reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES
        + '\nexamples:\n  pipes-bus run --context \'{"asset_keys": ["orders"]}\' -- python job.py'
        + "\n  pipes-bus run --launcher docker -L image=python:3.12 -- python job.py"
        + "\n  pipes-bus run --launcher slurm -L 'sbatch=[\"--gres=gpu:1\"]' -- python train.py",
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
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="cancel the session this long after the command starts: writers anywhere are "
        "asked to stop, the command gets SIGTERM, and SIGKILL once the grace is over",
    )
    liveness_help = (
        "declare a writer lost (exit 4) once it has been heard from neither by message nor "
        "by heartbeat for this long (default: 3 of its heartbeat intervals, and a little)"
    )
    run.add_argument("--liveness", type=float, metavar="SECONDS", help=liveness_help)
    run.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        help="how long a quiet writer waits before it leaves a sign of life; 0 for none "
        "(default: the store's, 60 on an object store, 5 on a directory)",
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
        "--launcher",
        default="subprocess",
        metavar="NAME",
        help="where the command runs: subprocess (here, the default), docker, slurm, ray, "
        "dask, or a plugin's name",
    )
    run.add_argument(
        "--launcher-option",
        "-L",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the launcher (VALUE is parsed as JSON if it can be), e.g. "
        "-L image=python:3.12 -L 'volumes=[\"/data:/data:ro\"]'; repeatable",
    )
    run.add_argument(
        "--exec",
        action="store_true",
        help="run the command through `pipes-bus exec` where it runs, so that a program "
        "without the SDK (a shell script, a binary) reports its output and ::pipes-bus:: lines",
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
    tail.add_argument("--liveness", type=float, metavar="SECONDS", help=liveness_help)
    common(tail)

    ls = commands.add_parser(
        "ls",
        help="list the sessions on a bus, with their state and age",
        description="List the sessions on a bus, oldest first: each one's state (running, "
        "succeeded, failed, cancelled, lost; unknown if it has no pipes_bus manifest), when "
        "it was created, its age, its writers, and why it did not succeed.",
    )
    bus_argument(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per session")
    common(ls)

    cancel = commands.add_parser(
        "cancel",
        help="ask every writer of a session to stop, wherever it runs",
        description=_wrap(
            "Ask every writer of a session to stop. The request is an object on the bus: it "
            "reaches writers this host cannot signal (another host, a container, a cluster "
            "job). Each stops as on SIGTERM at its next look (within 2.5 s on an object "
            "store, 0.25 s on a directory, by default), and the session ends with status 7."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="SESSION is a session id on --bus (or the default bus), or its location.\n"
        "A signed session needs its key in $PIPES_BUS_KEY.",
    )
    cancel.add_argument("session", metavar="SESSION")
    cancel.add_argument(
        "--bus", metavar="URL", help=f"bus URL (default: ${BUS_ENV} or a local directory)"
    )
    cancel.add_argument("--reason", metavar="TEXT", help="why: shown in the session's result")
    cancel.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="for work a launcher started (docker, slurm, ray, dask): how long it may take to "
        "stop by itself before the platform's own cancel is used (default 10)",
    )
    common(cancel)

    gc = commands.add_parser(
        "gc",
        help="delete finished sessions older than a duration",
        description=_wrap(
            "Delete the finished sessions created more than DURATION ago; print each one, "
            "and the objects and bytes freed. Sessions that have not ended (running, or "
            "unknown) are kept unless --force."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="DURATION is a number with s, m, h, d or w: 30m, 12h, 7d.\n"
        "example:\n  pipes-bus gc s3://bucket/bus --older-than 7d --dry-run",
    )
    bus_argument(gc)
    gc.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="delete sessions created longer ago than this (e.g. 7d)",
    )
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; delete nothing"
    )
    gc.add_argument(
        "--force", action="store_true", help="delete unfinished sessions too (running ones!)"
    )
    common(gc)

    from pipes_bus.cli import _exec  # the worker side's command: its parser lives with it

    _exec.add_parser(commands)
    return parser


def _exec_parser() -> argparse.ArgumentParser:
    """The parser of ``pipes-bus exec`` alone (no orchestrator module loads for it)."""
    from pipes_bus.cli import _exec

    parser = argparse.ArgumentParser(prog="pipes-bus")
    _exec.add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pipes-bus`` command."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = (_exec_parser() if words[:1] == ["exec"] else _parser()).parse_args(words)
    try:
        if args.command == "run":
            from pipes_bus.cli._run import run

            return run(args)
        if args.command == "tail":
            from pipes_bus.cli._tail import tail

            return tail(args)
        if args.command == "exec":
            from pipes_bus.cli._exec import exec_command

            return exec_command(args)
        from pipes_bus.cli import _sessions

        command: Callable[[argparse.Namespace], int] = getattr(_sessions, args.command)
        return command(args)
    except ConfigurationError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except PipesBusError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_BUS
    except OSError as exc:
        print(f"pipes-bus: {printable(redact(str(exc)))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("pipes-bus: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
