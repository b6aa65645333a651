"""Fan-in at scale: 10 to 1,000 writers in one session, and what the orchestrator pays."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

from _checks import check_file
from _core import Context, Row, Table, num
from _procs import ProcessWatch, workload
from _stores import open_store

# The orchestrator is `pipes-bus run` itself, made to say its own CPU time at the end.
MEASURED = (
    "import resource, sys\n"
    "from pipes_bus.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print(f'orchestrator cpu {r.ru_utime + r.ru_stime:.3f}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def scale(ctx: Context) -> Iterator[Row]:
    """Fan-in at scale: 10, 100 and 1,000 writers in one session on S3

    One worker process runs ``writers`` threads, each with a writer of its own through the
    log API (a ChunkWriter on one shared transport), each writing ``total / writers``
    messages; ``pipes-bus run --events FILE`` follows the session. Every message is
    checked (exactly once, in order, every writer closed). The orchestrator's CPU time
    (its own, not the worker's), its store requests (its summary line) and its peak RSS
    (sampled from /proc) are given per message and per writer.
    """
    total = ctx.opt("total", 200_000, quick=20_000)
    for name in ctx.opt("stores", ["s3"]):
        with open_store(name) as store:
            for writers in ctx.opt("writers", [10, 100, 1000], quick=[10, 100]):
                per = total // writers
                events = ctx.tmp / f"scale-{writers}.jsonl"
                argv = [sys.executable, "-c", MEASURED, "run", "--bus", store.url]
                argv += [*store.storage_args(), "--events", str(events), "--"]
                argv += workload("threads", "--writers", str(writers), "--count", str(per))
                env = {**os.environ, **store.env}
                proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env, text=True)
                with ProcessWatch(proc.pid) as watch:
                    _, stderr = proc.communicate(timeout=1800)
                counts, problems = check_file(events, writers, per)
                events.unlink(missing_ok=True)
                if proc.returncode:
                    problems.append(f"exit {proc.returncode}: {stderr.strip()[-300:]}")
                cpu = re.search(r"orchestrator cpu ([\d.]+)", stderr)
                requests = re.search(r"([\d,]+) store requests", stderr)
                n_requests = int(requests.group(1).replace(",", "")) if requests else None
                metrics = {
                    **counts,
                    "cpu_s": float(cpu.group(1)) if cpu else None,
                    "cpu_us_per_message": float(cpu.group(1)) / (writers * per) * 1e6
                    if cpu
                    else None,
                    "requests": n_requests,
                    "requests_per_writer": n_requests / writers if n_requests else None,
                    "peak_rss_mib": watch.root_peak_mib,
                }
                params = {"store": name, "writers": writers, "per_writer": per}
                yield Row(f"{name}, {writers:,} writers", params, metrics, problems)


def tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["store", "writers", "messages", "checked", "orchestrator CPU"]
    headers += ["CPU per message", "requests", "requests per writer", "orchestrator peak RSS"]
    cells = []
    for r in rows:
        m = r.metrics
        cells.append(
            [
                r.params["store"],
                num(r.params["writers"]),
                num(r.params["writers"] * r.params["per_writer"]),
                "exactly once, in order" if not r.problems else "; ".join(r.problems)[:80],
                f"{m['cpu_s']:.1f} s" if m.get("cpu_s") is not None else "-",
                f"{m['cpu_us_per_message']:.1f} µs" if m.get("cpu_us_per_message") else "-",
                num(m.get("requests")),
                num(m.get("requests_per_writer"), 1),
                f"{m['peak_rss_mib']:.0f} MiB",
            ]
        )
    return {"": (headers, cells)}
