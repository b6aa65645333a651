"""Worker programs that the end-to-end benchmarks launch under ``pipes-bus run``.

Each subcommand uses only the worker API (``pipes_bus.open_worker``), as a user's job
would. With ``--report FILE`` the program writes one JSON object about itself once its
writer has closed: messages sent, seconds spent emitting, and its peak RSS.

    burst   --count N               N custom messages {"i": i}, as fast as possible
    trickle --rate R --seconds S    R messages/s {"i": i, "t": time.time() at emit}
    fanin   --procs P --count N     P processes (multiprocessing), each its own writer
                                    labelled "rank r", each N messages {"r": r, "i": i}
            [--rate R] [--pad B]    ... at R messages/s each (0: flat out), B filler characters
            [--preload MODULE]      import MODULE (a transport plugin) before forking
    stream  --count N --size B      N messages {"i": i, "data": B characters}
    idle    --procs P --until T     P processes open a writer each, report nothing until the
                                    Unix time T, then close
    unencodable --count N           N messages, one payload nothing can encode (it raises at
                                    the call and is skipped), N more: 2N messages delivered
"""

from __future__ import annotations

import argparse
import importlib
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


def _rank(rank: int, count: int, rate: float = 0.0, pad: int = 0) -> None:
    with pipes_bus.open_worker(label=f"rank {rank}") as worker:
        report = worker.report_custom_message
        if rate <= 0 and not pad:
            for i in range(count):
                report({"r": rank, "i": i})
            return
        filler = "x" * pad
        start = time.monotonic()
        for i in range(count):
            if rate > 0:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            report({"r": rank, "i": i, "v": filler})


def fanin(
    procs: int,
    count: int,
    start_method: str,
    rate: float = 0.0,
    pad: int = 0,
    preload: list[str] | None = None,
) -> int:
    for module in preload or ():
        # Forked children inherit it: each does not pay the cloud SDK's import again.
        importlib.import_module(module)
    ctx = multiprocessing.get_context(start_method)
    children = [
        ctx.Process(target=_rank, args=(r, count, rate, pad))  # type: ignore[attr-defined]
        for r in range(procs)
    ]
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


def _idle(rank: int, until: float) -> None:
    with pipes_bus.open_worker(label=f"idle {rank}"):
        time.sleep(max(0.0, until - time.time()))


def idle(procs: int, until: float, preload: list[str] | None = None) -> int:
    for module in preload or ():
        importlib.import_module(module)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_idle, args=(r, until)) for r in range(procs)]
    for child in children:
        child.start()
    for child in children:
        child.join()
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} of {procs} processes failed (exit codes {failed[:5]})")
    return 0


# Anything a workload wants in its --report besides the standard fields.
EXTRA: dict[str, object] = {}


def unencodable(count: int) -> int:
    raised = None
    with pipes_bus.open_worker() as worker:
        for i in range(count):
            worker.report_custom_message({"i": i})
        try:
            worker.report_custom_message({"i": -1, "value": object()})
        except pipes_bus.EncodeError as exc:
            raised = f"{type(exc).__name__}: {exc}"
        for i in range(count, 2 * count):
            worker.report_custom_message({"i": i})
    EXTRA["raised_at_call"] = raised
    return 2 * count


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    s.add_argument("--rate", type=float, default=0.0, help="messages/s per process (0: flat out)")
    s.add_argument("--pad", type=int, default=0, help="filler characters per payload")
    s.add_argument("--preload", action="append", default=[], metavar="MODULE")
    s = sub.add_parser("stream")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, default=1000)
    s = sub.add_parser("idle")
    s.add_argument("--procs", type=int, required=True)
    s.add_argument("--until", type=float, required=True, help="Unix time to close at")
    s.add_argument("--preload", action="append", default=[], metavar="MODULE")
    s = sub.add_parser("unencodable")
    s.add_argument("--count", type=int, required=True)
    args = p.parse_args(argv)

    started = time.perf_counter()
    if args.workload == "burst":
        sent = burst(args.count)
    elif args.workload == "trickle":
        sent = trickle(args.rate, args.seconds)
    elif args.workload == "fanin":
        sent = fanin(args.procs, args.count, args.start_method, args.rate, args.pad, args.preload)
    elif args.workload == "idle":
        sent = idle(args.procs, args.until, args.preload)
    elif args.workload == "unencodable":
        sent = unencodable(args.count)
    else:
        sent = stream(args.count, args.size)
    seconds = time.perf_counter() - started
    if args.report:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open(args.report, "w") as f:
            # ru_maxrss is in KiB on Linux (bytes on macOS).
            scale = 1024 * 1024 if sys.platform == "darwin" else 1024
            peak = usage.ru_maxrss / scale
            json.dump({"sent": sent, "seconds": seconds, "peak_rss_mib": peak, **EXTRA}, f)


if __name__ == "__main__":
    main()
