"""``pipes-bus exec``: make any program a writer of the session, with no SDK (worker side).

Only the standard library loads here: ``pipes-bus`` builds its parser from this module.
The work is in :mod:`pipes_bus._worker.exec`, loaded when the command runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from typing import Any

__all__ = ["add_parser", "exec_command"]

EPILOG = """\
COMMAND's stdout and stderr lines are carried to the session as `output`
events, and echoed unchanged to this command's own stdout and stderr. A line
of this form, on stdout or stderr, is a report instead:

  ::pipes-bus::{"kind": "progress", "current": 3, "total": 10, "unit": "files"}

kind is log, progress, custom, materialization or check; the other members are
the arguments of the matching Worker method (docs/protocol.md shows each kind):
  log              message, level ("info"; debug, warning, error, critical),
                   fields ({})
  progress         current, total, unit, label
  custom           payload
  materialization  asset_key, metadata, data_version
  check            check_name, passed, asset_key, severity ("error" or "warn"),
                   metadata
A line that starts with ::pipes-bus:: but is not a valid directive (or is
longer than 262144 characters) stays an output line, and a warning log event
says what was wrong.

SIGTERM, SIGINT and SIGHUP are passed on to COMMAND's process group. When the
session is cancelled, the group gets SIGTERM, then SIGKILL after --grace
seconds (as after SIGTERM or SIGHUP); `closed` carries the cancel, and exec
ends by SIGTERM.

exit status:
  N     COMMAND's own status (128+S if it died of signal S)
  126   COMMAND cannot be executed
  127   COMMAND was not found
  2     bad arguments, or no session in the environment
  6     the bus could not be reached

example:
  pipes-bus run -- pipes-bus exec --label etl -- bash etl.sh
"""


def add_parser(commands: Any) -> None:
    """Add ``exec`` to the ``pipes-bus`` subcommands."""
    p = commands.add_parser(
        "exec",
        help="(worker side) run any program as a writer of the session it runs in",
        description=textwrap.fill(
            "Run COMMAND as a writer of the session named by the environment "
            "($PIPES_BUS_SESSION), with no SDK: its output and its ::pipes-bus:: lines "
            "reach the session, and `closed` says how it ended.",
            79,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument(
        "--label",
        metavar="TEXT",
        help="this writer's label (default: $PIPES_BUS_LABEL, else rank-$RANK, ...)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="after a cancel, SIGTERM or SIGHUP, how long COMMAND's group has before "
        "SIGKILL (default 10)",
    )
    p.add_argument(
        "--no-echo",
        action="store_true",
        help="do not echo COMMAND's output to this command's stdout and stderr",
    )
    p.add_argument(
        "--no-directives",
        action="store_true",
        help="carry ::pipes-bus:: lines as plain output",
    )
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARGS...]")


def exec_command(args: argparse.Namespace) -> int:
    """Run the command; its exit status (a cancelled exec ends by SIGTERM instead)."""
    from pipes_bus._worker.exec import run
    from pipes_bus.cli import command_after_dashes, require_seconds

    command = command_after_dashes(args, "exec -- bash job.sh")
    require_seconds(args, "grace")

    result = run(
        command,
        label=args.label,
        grace=args.grace,
        echo=not args.no_echo,
        directives=not args.no_directives,
    )
    if result.signal is not None:
        # End the way a worker stopped by the session does: by the signal itself.
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(result.signal, signal.SIG_DFL)
        os.kill(os.getpid(), result.signal)
    return result.status
