"""Worker programs for the Dagster Pipes side of the comparisons (dagster_pipes only).

Each subcommand is an unmodified Dagster Pipes worker, wired the way Dagster's docs wire
it: ``open_dagster_pipes()`` with the default message writer (the file or stdio channel
the orchestrator's reader asks for), or with ``--writer s3``
``PipesS3MessageWriter(client=boto3.client("s3"))`` (the endpoint comes from
``AWS_ENDPOINT_URL_S3``, as for any boto3 client). ``--interval`` is the S3 writer's upload
interval (its default: 10 s). With ``--report FILE`` it writes what it sent.

    burst --count N                 N custom messages {"i": i}, as fast as possible
    trickle --rate R --seconds S    R messages/s {"i": i, "t": time.time() at emit}
    unencodable --count N           N messages, one payload JSON cannot encode, N more
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dagster_pipes import PipesS3MessageWriter, open_dagster_pipes


def _pipes(writer: str, interval: float | None) -> Any:
    if writer == "s3":
        import boto3

        options = {} if interval is None else {"interval": interval}
        return open_dagster_pipes(
            message_writer=PipesS3MessageWriter(client=boto3.client("s3"), **options)
        )
    return open_dagster_pipes()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--writer", choices=("default", "s3"), default="default")
    p.add_argument("--interval", type=float, help="S3 writer upload interval (default: its own)")
    p.add_argument("--report", metavar="FILE")
    sub = p.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("burst")
    s.add_argument("--count", type=int, required=True)
    s = sub.add_parser("trickle")
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("unencodable")
    s.add_argument("--count", type=int, required=True)
    args = p.parse_args()

    sent = 0
    raised = None
    started = time.perf_counter()
    with _pipes(args.writer, args.interval) as pipes:
        report = pipes.report_custom_message
        if args.workload == "burst":
            for i in range(args.count):
                report({"i": i})
            sent = args.count
        elif args.workload == "trickle":
            count = int(args.rate * args.seconds)
            start = time.monotonic()
            for i in range(count):
                delay = start + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                report({"i": i, "t": time.time()})
            sent = count
        else:
            for i in range(args.count):
                report({"i": i})
            try:
                report({"i": -1, "value": object()})
            except Exception as exc:  # the default writer raises here; the S3 one does not
                raised = f"{type(exc).__name__}: {exc}"
            for i in range(args.count, 2 * args.count):
                report({"i": i})
            sent = 2 * args.count
    emitted = time.perf_counter() - started
    if args.report:
        with open(args.report, "w") as f:
            json.dump({"sent": sent, "seconds": emitted, "raised_at_call": raised}, f)


if __name__ == "__main__":
    main()
