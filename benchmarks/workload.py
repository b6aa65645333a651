"""Worker programs that the end-to-end benchmarks launch under ``pipes-bus run``.

Each subcommand uses only the worker API (``pipes_bus.open_worker``), as a user's job
would. With ``--report FILE`` the program writes one JSON object about itself once its
writer has closed: messages sent, seconds spent emitting, and its peak RSS.

    burst   --count N               N custom messages {"i": i}, as fast as possible
    trickle --rate R --seconds S    R messages/s {"i": i, "t": time.time() at emit}
    fanin   --procs P --count N     P processes (multiprocessing), each its own writer
                                    labelled "rank r", each N messages {"r": r, "i": i}
    stream  --count N --size B      N messages {"i": i, "data": B characters}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time

import pipes_bus


def burst(count: int) -> int:
    with pipes_bus.open_worker() as worker:
        report = worker.report_custom_message
        for i in range(count):
            report({"i": i})
    return count


def trickle(rate: float, seconds: float) -> int:
    count = int(rate * seconds)
    with pipes_bus.open_worker() as worker:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            worker.report_custom_message({"i": i, "t": time.time()})
    return count


def _rank(rank: int, count: int) -> None:
    with pipes_bus.open_worker(label=f"rank {rank}") as worker:
        report = worker.report_custom_message
        for i in range(count):
            report({"r": rank, "i": i})


def fanin(procs: int, count: int, start_method: str) -> int:
    ctx = multiprocessing.get_context(start_method)
    children = [ctx.Process(target=_rank, args=(r, count))  # type: ignore[attr-defined]
                for r in range(procs)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} of {procs} processes failed (exit codes {failed[:5]})")
    return procs * count


def stream(count: int, size: int) -> int:
    data = "x" * size
    with pipes_bus.open_worker() as worker:
        report = worker.report_custom_message
        for i in range(count):
            report({"i": i, "data": data})
    return count


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", metavar="FILE", help="write a JSON summary here at the end")
    sub = p.add_subparsers(dest="workload", required=True)
    s = sub.add_parser("burst")
    s.add_argument("--count", type=int, required=True)
    s = sub.add_parser("trickle")
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("fanin")
    s.add_argument("--procs", type=int, required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--start-method", default="fork", choices=("fork", "spawn", "forkserver"))
    s = sub.add_parser("stream")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, default=1000)
    args = p.parse_args(argv)

    started = time.perf_counter()
    if args.workload == "burst":
        sent = burst(args.count)
    elif args.workload == "trickle":
        sent = trickle(args.rate, args.seconds)
    elif args.workload == "fanin":
        sent = fanin(args.procs, args.count, args.start_method)
    else:
        sent = stream(args.count, args.size)
    seconds = time.perf_counter() - started
    if args.report:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(args.report, "w") as f:
            # ru_maxrss is in KiB on Linux (bytes on macOS).
            scale = 1024 * 1024 if sys.platform == "darwin" else 1024
            peak = usage.ru_maxrss / scale
            json.dump({"sent": sent, "seconds": seconds, "peak_rss_mib": peak}, f)


if __name__ == "__main__":
    main()
