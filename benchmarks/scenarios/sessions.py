"""Many sessions in one process: the asyncio API following hundreds of sessions on S3."""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from _core import Context, Row, Table, ms, num, percentile
from _procs import workload
from _stores import open_store

from pipes_bus.orchestrator import AsyncSession, Event

PROCESSES = 4  # the writers' processes, each holding sessions / PROCESSES writers


async def _follow_all(
    url: str, count: int, messages: int, interval: float, tmp: Any
) -> dict[str, Any]:
    sessions = [AsyncSession(url, grace=60.0, sources=[]) for _ in range(count)]
    await asyncio.gather(*(s.open() for s in sessions))
    procs = []
    for part in range(PROCESSES):
        envs = tmp / f"sessions-{part}.json"
        envs.write_text(json.dumps([s.env for s in sessions[part::PROCESSES]]))
        args = ["--envs", str(envs), "--count", str(messages), "--interval", str(interval)]
        procs.append(subprocess.Popen(workload("sessions", *args)))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    latencies: list[float] = []

    async def one(session: AsyncSession) -> list[int]:
        seen = []
        async for item in session.follow(done=lambda: all(p.poll() is not None for p in procs)):
            if isinstance(item, Event) and type(item.message).__name__ == "Custom":
                payload = item.message.payload  # type: ignore[union-attr]
                seen.append(payload["i"])
                latencies.append(time.time() - payload["t"])
        return seen

    try:
        got = await asyncio.gather(*(one(s) for s in sessions))
    finally:
        for p in procs:
            p.wait(timeout=120)
    seconds = time.monotonic() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    requests = sum(sum(s.transport.stats.snapshot()["requests"].values()) for s in sessions)
    results = [s.result for s in sessions]
    for s in sessions:
        await s.aclose()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    latencies.sort()
    wrong = [i for i, seen in enumerate(got) if seen != list(range(messages))]
    failed = [r.session for r in results if r.exit_status() != 0]
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "requests": requests,
        "peak_rss_mib": cpu1.ru_maxrss / 1024,
        "p50_ms": (percentile(latencies, 0.5) or 0) * 1000,
        "p95_ms": (percentile(latencies, 0.95) or 0) * 1000,
        "wrong": wrong,
        "failed": failed,
    }


def sessions(ctx: Context) -> Iterator[Row]:
    """200 sessions on S3 followed from one asyncio loop: CPU, memory and requests

    ``sessions`` AsyncSessions are opened in this process, on one event loop; their writers
    are in 4 other processes (one writer per session), each reporting ``messages``
    messages, one every ``interval`` seconds, then closing. The follower's CPU time and
    the requests its sessions sent (their transports' counts) are taken over the whole
    run and given per session-hour; every session must get its messages exactly once, in
    order, and end with status 0.
    """
    count = ctx.opt("sessions", 200, quick=8)
    messages, interval = ctx.opt("messages", 12, quick=2), ctx.opt("interval", 10.0, quick=1.0)
    with open_store("s3") as store:
        m = asyncio.run(_follow_all(store.url, count, messages, interval, ctx.tmp))
    hours = m["seconds"] / 3600
    problems = [f"{len(m['wrong'])} sessions did not get 0..{messages - 1} in order"] * bool(
        m["wrong"]
    )
    problems += [f"{len(m['failed'])} sessions did not end with status 0"] * bool(m["failed"])
    metrics = {
        "sessions": count,
        "seconds": m["seconds"],
        "cpu_share": m["cpu_s"] / m["seconds"],
        "cpu_s_per_session_hour": m["cpu_s"] / count / hours,
        "requests_per_session_hour": m["requests"] / count / hours,
        "peak_rss_mib": m["peak_rss_mib"],
        "p50_ms": m["p50_ms"],
        "p95_ms": m["p95_ms"],
    }
    params = {"store": "s3", "sessions": count, "messages": messages, "interval_s": interval}
    yield Row(f"s3, {count} sessions", params, metrics, problems)


def tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["store", "sessions", "each", "run", "follower CPU", "CPU s per session-hour"]
    headers += ["requests per session-hour", "peak RSS", "latency p50 / p95"]
    cells = [
        [
            r.params["store"],
            num(r.metrics["sessions"]),
            f"{r.params['messages']} messages, one every {r.params['interval_s']:g} s",
            f"{r.metrics['seconds']:.0f} s",
            f"{r.metrics['cpu_share']:.0%} of a core",
            f"{r.metrics['cpu_s_per_session_hour']:.1f}",
            num(r.metrics["requests_per_session_hour"]),
            f"{r.metrics['peak_rss_mib']:.0f} MiB",
            f"{ms(r.metrics['p50_ms'])} / {ms(r.metrics['p95_ms'])}",
        ]
        for r in rows
    ]
    return {"": (headers, cells)}
