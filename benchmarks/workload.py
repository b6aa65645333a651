"""Worker programs the end-to-end scenarios launch under ``pipes-bus run``.

Each subcommand uses only the worker API (``pipes_bus.open_worker``), as a user's job
would. With ``--report FILE`` it writes one JSON object once its writer has closed:
messages sent, seconds spent emitting, its peak RSS, and what else it noted.

    burst --count N              N custom messages {"i": i}, as fast as possible
    trickle --rate R --seconds S R messages/s {"i": i, "t": time.time() at emit}
    stream --count N --size B    N messages {"i": i, "data": B characters}
    fanin --procs P --count N    P processes (multiprocessing, fork), each its own writer
          [--rate R] [--pad B]   "rank r" sending N messages {"r": r, "i": i}, at R/s each
                                 (0: flat out), with B filler characters
    idle --procs P --until T     P processes open a writer each, report nothing until the
                                 Unix time T, then close
    unencodable --count N        N messages, one payload nothing can encode (it raises at
                                 the call and is skipped), N more: 2N delivered
    wake --procs P --writers N   P processes with N writers each (one open_worker per
          --until T --speak K    writer), all quiet until the Unix time T; then the first
                                 writer of each of the first K processes reports one
                                 message {"r": r, "t": time.time()}; all close 20 s later
    threads --writers N          N threads in this process, each with a writer of its own
          --count M              through the log API (a ChunkWriter on one shared
                                 transport), each writing M messages {"r": w, "i": i}
    sessions --envs FILE         one writer per session environment in FILE (a JSON list),
          --count N --interval S all in this process: each reports N messages {"i": i,
                                 "t": time.time()}, one every S seconds, then closes
    cancelled                    opens a writer, prints "ready", waits; when the session
                                 is cancelled, prints the Unix time pipes_bus.Cancelled
                                 was raised in the main thread, and exits as on SIGTERM
    fanin and idle take --preload MODULE: a transport plugin imported before forking, so
    that each child does not import the cloud SDK again.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import resource
import sys
import time
from typing import Any

import pipes_bus

NOTES: dict[str, Any] = {}  # what a workload adds to its --report


def _paced(count: int, rate: float) -> Any:
    """0..count-1, each yielded at its time when ``rate`` (messages/s) is given."""
    start = time.monotonic()
    for i in range(count):
        if rate > 0:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        yield i


def burst(count: int) -> int:
    with pipes_bus.open_worker() as worker:
        report = worker.report_custom_message
        for i in range(count):
            report({"i": i})
    return count


def trickle(rate: float, seconds: float) -> int:
    count = int(rate * seconds)
    with pipes_bus.open_worker() as worker:
        for i in _paced(count, rate):
            worker.report_custom_message({"i": i, "t": time.time()})
    return count


def stream(count: int, size: int) -> int:
    data = "x" * size
    with pipes_bus.open_worker() as worker:
        report = worker.report_custom_message
        for i in range(count):
            report({"i": i, "data": data})
    return count


def _rank(rank: int, count: int, rate: float, pad: int) -> None:
    with pipes_bus.open_worker(label=f"rank {rank}") as worker:
        report = worker.report_custom_message
        if rate <= 0 and not pad:
            for i in range(count):
                report({"r": rank, "i": i})
            return
        filler = "x" * pad
        for i in _paced(count, rate):
            report({"r": rank, "i": i, "v": filler})


def _idle(rank: int, until: float) -> None:
    with pipes_bus.open_worker(label=f"idle {rank}"):
        time.sleep(max(0.0, until - time.time()))


def _wake(rank: int, writers: int, until: float, speak: int) -> None:
    workers = [pipes_bus.open_worker(label=f"quiet {rank}.{i}") for i in range(writers)]
    try:
        time.sleep(max(0.0, until - time.time()))
        if rank < speak:
            workers[0].report_custom_message({"r": rank, "t": time.time()})
        time.sleep(20)
    finally:
        for worker in workers:
            worker.close()


def children(target: Any, procs: int, *args: Any) -> None:
    """Run ``target(rank, *args)`` in ``procs`` forked processes; fail if any did."""
    ctx = multiprocessing.get_context("fork")
    started = [ctx.Process(target=target, args=(r, *args)) for r in range(procs)]
    for child in started:
        child.start()
    for child in started:
        child.join()
    failed = [c.exitcode for c in started if c.exitcode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} of {procs} processes failed (exit codes {failed[:5]})")


def unencodable(count: int) -> int:
    with pipes_bus.open_worker() as worker:
        for i in range(count):
            worker.report_custom_message({"i": i})
        try:
            worker.report_custom_message({"i": -1, "value": object()})
        except pipes_bus.EncodeError as exc:
            NOTES["raised_at_call"] = f"{type(exc).__name__}: {exc}"
        for i in range(count, 2 * count):
            worker.report_custom_message({"i": i})
    return 2 * count


def sessions(envs: str, count: int, interval: float) -> int:
    with open(envs) as f:
        environments = json.load(f)
    workers = [pipes_bus.open_worker(env=env) for env in environments]
    try:
        for i in _paced(count, 1 / interval):
            for worker in workers:
                worker.report_custom_message({"i": i, "t": time.time()})
    finally:
        for worker in workers:
            worker.close()
    return count * len(workers)


def threads(writers: int, count: int) -> int:
    import threading

    from pipes_bus._wire.bootstrap import decode_params
    from pipes_bus.log import ChunkWriter
    from pipes_bus.messages import Custom, Opened, WriterInfo
    from pipes_bus.transports import open_transport

    params = decode_params()
    transport = open_transport(params.bus, **params.storage_options)
    start = threading.Barrier(writers)

    def one(w: int) -> None:
        writer_id = f"t-{w:05d}"
        with ChunkWriter(transport, params.session, writer_id) as writer:
            writer.write(Opened(time=time.time(), info=WriterInfo(id=writer_id)))
            start.wait()
            for i in range(count):
                writer.write(Custom(payload={"r": w, "i": i}))

    pool = [threading.Thread(target=one, args=(w,)) for w in range(writers)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return writers * count


def cancelled() -> int:
    with pipes_bus.open_worker():
        print("ready", flush=True)
        try:
            while True:
                time.sleep(0.01)
        except pipes_bus.Cancelled:
            print(f"{time.time():.6f}", flush=True)
            raise
    return 0  # not reached: the worker is cancelled


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--report", metavar="FILE", help="write a JSON summary here at the end")
    sub = p.add_subparsers(dest="workload", required=True)
    options = {
        "burst": ["count"],
        "trickle": ["rate", "seconds"],
        "stream": ["count", "size"],
        "fanin": ["procs", "count", "rate", "pad", "preload"],
        "idle": ["procs", "until", "preload"],
        "unencodable": ["count"],
        "cancelled": [],
        "sessions": ["envs", "count", "interval"],
        "threads": ["writers", "count"],
        "wake": ["procs", "writers", "until", "speak", "preload"],
    }
    kinds = {"count": int, "procs": int, "size": int, "pad": int, "rate": float}
    kinds |= {"writers": int, "speak": int}
    kinds |= {"seconds": float, "until": float, "interval": float, "envs": str}
    for name, names in options.items():
        s = sub.add_parser(name)
        for option in names:
            if option == "preload":
                s.add_argument("--preload", action="append", default=[], metavar="MODULE")
            else:
                optional = name == "fanin" and option in ("rate", "pad")
                s.add_argument(f"--{option}", type=kinds[option], required=not optional, default=0)
    args = p.parse_args()
    for module in getattr(args, "preload", []):
        importlib.import_module(module)  # forked children inherit it
    started = time.perf_counter()
    if args.workload == "fanin":
        children(_rank, args.procs, args.count, args.rate, args.pad)
        sent = args.procs * args.count
    elif args.workload == "idle":
        children(_idle, args.procs, args.until)
        sent = 0
    elif args.workload == "wake":
        children(_wake, args.procs, args.writers, args.until, args.speak)
        sent = min(args.speak, args.procs)
    else:
        run = {"burst": burst, "trickle": trickle, "stream": stream, "unencodable": unencodable}
        run["cancelled"] = cancelled
        run["sessions"] = sessions
        run["threads"] = threads
        sent = run[args.workload](*(getattr(args, o) for o in options[args.workload]))
    seconds = time.perf_counter() - started
    if args.report:
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        with open(args.report, "w") as f:
            json.dump({"sent": sent, "seconds": seconds, "peak_rss_mib": peak, **NOTES}, f)


if __name__ == "__main__":
    main()
