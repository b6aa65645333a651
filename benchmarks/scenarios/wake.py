"""Quiet writers heard at once: the wake-up latency of many idle writers on S3."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

from _core import Context, Row, Table, Target, ms, verdict
from _procs import pipes_bus_cli, workload
from _proxy import rates
from _stores import s3_proxied

WAKE_GOAL = Target(
    "max_ms",
    "<=",
    2000,
    goal="A message from any of many writers idle for 90 s is heard within 2 s on S3",
    shown="{value:,.0f} ms at worst",
    full_only=True,
)
IDLE_GOAL = Target(
    "orchestrator_requests_per_s",
    "<=",
    1.0,
    goal="Meanwhile the idle session costs at most 1 request/s, whatever its writers",
    shown="{value:.2f} requests/s",
    full_only=True,
)


def wake(ctx: Context) -> Iterator[Row]:
    """Wake-up: 64 and 256 writers quiet for 90 s on S3, then three of them speak

    Under ``pipes-bus run`` with the defaults, behind a counting proxy, ``procs``
    processes each open ``writers / procs`` writers (one ``open_worker`` each) and say
    nothing for ``quiet`` seconds; then the first writer of three processes reports one
    message carrying the time it was sent. Each message's delay is the time the
    orchestrator printed it (``--events -``) minus that time (one host, one clock). The
    orchestrator's own requests (the workers' cancel checks and beats left out) are
    counted over the last 60 s of the quiet spell.
    """
    quiet = ctx.opt("quiet", 90.0, quick=8.0)
    for writers in ctx.opt("writers", [64, 256], quick=[8]):
        procs = max(4, writers // 64)
        with s3_proxied() as store:
            start = store.proxy.now()
            until = time.time() + quiet
            args = ["--procs", str(procs), "--writers", str(writers // procs)]
            args += ["--until", f"{until:.3f}", "--speak", "3", *store.preload()]
            argv = [*pipes_bus_cli(), "run", "-q", "--bus", store.url, *store.storage_args()]
            argv += ["--events", "-", "--", *workload("wake", *args)]
            env = {**os.environ, **store.env}
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
            )
            assert proc.stdout is not None
            delays = []
            for line in proc.stdout:
                event = json.loads(line)
                if event["kind"] == "custom":
                    delays.append((time.time() - event["payload"]["t"]) * 1000)
            _, stderr = proc.communicate(timeout=300)
            spoke = start + quiet - 2
            metrics = rates(store.proxy.samples, spoke - 60, spoke)
        problems = [f"exit {proc.returncode}: {stderr.strip()[-300:]}"] if proc.returncode else []
        if len(delays) != 3:
            problems.append(f"{len(delays)} of 3 messages were heard")
        delays.sort()
        metrics |= {"delays_ms": delays, "max_ms": delays[-1] if delays else None}
        params = {"store": "s3", "writers": writers, "procs": procs, "quiet_s": quiet}
        label = f"s3, {writers} writers quiet for {quiet:g} s"
        yield Row(label, params, metrics, problems, [WAKE_GOAL, IDLE_GOAL])


def tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["writers", "quiet for", "delays of the 3 messages", "orchestrator requests/s"]
    headers += ["goal"]
    cells = [
        [
            f"{r.params['writers']:,} ({r.params['procs']} processes)",
            f"{r.params['quiet_s']:g} s",
            ", ".join(ms(d) for d in r.metrics.get("delays_ms", [])),
            f"{r.metrics.get('orchestrator_requests_per_s', 0):.2f}",
            verdict(r),
        ]
        for r in rows
    ]
    return {"": (headers, cells)}
