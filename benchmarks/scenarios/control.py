"""The control channel: how fast a cancel reaches a worker that nobody can signal."""

from __future__ import annotations

import os
import random
import selectors
import subprocess
import time
from collections.abc import Iterator
from typing import Any

from _core import Context, Row, Table, Target, ms, percentile, verdict
from _procs import workload
from _stores import open_store

from pipes_bus.orchestrator import Session

# The cancel check's defaults (pipes_bus._worker.api.control_timings): the phase of a
# request against the worker's polling is drawn uniformly over one such period.
CHECK = {"file": 0.25}
REMOTE_CHECK = 2.5


def _goal(limit: float, where: str) -> Target:
    return Target(
        "max_ms",
        "<=",
        limit * 1000,
        goal=f"A cancel reaches a worker within {limit:g} s on {where} with default settings",
        shown="{value:,.0f} ms at worst (p95 {p95_ms:,.0f} ms)",
    )


GOALS = {"file": _goal(1, "a directory"), "s3": _goal(5, "S3")}


def _line(process: subprocess.Popen[str], timeout: float) -> str:
    """The worker's next line of output, or "" when it has none within ``timeout`` s."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return process.stdout.readline().strip()


def _trial(store: Any, phase: float) -> tuple[float | None, float | None, list[str]]:
    """One cancel: (ms until Cancelled was raised in the worker, ms until its process
    ended, problems)."""
    session = Session(store.url, settle=0.0).open()
    env = {**os.environ, **store.env, **session.env}
    command = workload("cancelled")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    problems: list[str] = []
    raised = ended = None
    try:
        if _line(process, 60) != "ready":
            return None, None, [f"the worker never opened (exit {process.poll()})"]
        time.sleep(phase)
        asked = time.time()
        session.cancel("benchmark")
        stamp = _line(process, 60)
        if not stamp:
            return None, None, ["the worker never saw the cancel within 60 s"]
        raised = (float(stamp) - asked) * 1000
        process.wait(timeout=60)
        ended = (time.time() - asked) * 1000
        result = session.wait(grace=30)
        if result.exit_status() != 7:
            problems.append(f"the session ended with status {result.exit_status()}, not 7")
        if process.returncode not in (-15, 143):
            problems.append(f"the worker exited {process.returncode}, not by SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        session.close()
    return raised, ended, problems


def cancel(ctx: Context) -> Iterator[Row]:
    """Cancel latency: from Session.cancel() to pipes_bus.Cancelled in the worker

    For each store, ``trials`` sessions each launch one worker process (workload.py
    ``cancelled``) that opens, says it is ready and waits. After a pause drawn uniformly
    over one cancel-check period (so the request meets the worker's polling at every
    phase), the orchestrator calls ``Session.cancel()``; the worker prints the time at
    which ``pipes_bus.Cancelled`` was raised in its main thread, on the same clock. The
    session must then end with status 7 and the worker by SIGTERM. Defaults throughout:
    a check every 0.25 s on a directory, every 2.5 s on object stores.
    """
    trials = ctx.opt("trials", 12, quick=3)
    rng = random.Random(ctx.opt("seed", 13))
    for name in ctx.opt("stores", ["file", "s3", "azure", "gcs"], quick=["file", "s3"]):
        with open_store(name) as store:
            raised, ended, problems = [], [], []
            for _ in range(trials):
                got, gone, wrong = _trial(store, rng.uniform(0, CHECK.get(name, REMOTE_CHECK)))
                problems += wrong
                raised += [got] if got is not None else []
                ended += [gone] if gone is not None else []
        raised.sort()
        ended.sort()
        metrics = {
            "trials": trials,
            "p50_ms": percentile(raised, 0.5),
            "p95_ms": percentile(raised, 0.95),
            "max_ms": raised[-1] if raised else None,
            "exit_p50_ms": percentile(ended, 0.5),
        }
        params = {"store": name, "check_s": CHECK.get(name, REMOTE_CHECK)}
        targets = [GOALS[name]] if name in GOALS else []
        yield Row(name, params, metrics, problems, targets, {"latencies_ms": raised})


# S3 Standard: $0.0004 per 1,000 GET, $0.005 per 1,000 PUT, DELETE free.
PRICES = {"get": 4e-7, "put": 5e-6, "list": 5e-6}


def cost(ctx: Context) -> Iterator[Row]:
    """What a quiet worker's control thread costs: cancel checks and heartbeats per hour

    For each store, a worker opened in this process (``open_worker`` with the defaults)
    reports nothing for ``window`` seconds, all stores at once; its transport counts the
    requests of that window (no chunk is published while it is quiet, so they are the
    cancel checks and the heartbeats), extrapolated to a writer-hour and priced at S3
    Standard rates. Defaults: a check every 2.5 s and a beat a minute on object stores,
    every 0.25 s and every 5 s on a directory (where requests cost nothing).
    """
    import threading

    import pipes_bus

    window = ctx.opt("window", 150.0, quick=6.0)
    names = ctx.opt("stores", ["file", "s3", "azure", "gcs"], quick=["file", "s3"])
    found: dict[str, dict[str, int]] = {}

    def measure(name: str) -> None:
        with open_store(name) as store:
            session = Session(store.url, settle=0.0).open()
            with pipes_bus.open_worker(env={**store.env, **session.env}) as worker:
                control = worker._control
                assert control is not None
                stats = control.transport.stats
                before = dict(stats.snapshot()["requests"])
                time.sleep(window)
                after = stats.snapshot()["requests"]
            session.close()
        found[name] = {k: after.get(k, 0) - before.get(k, 0) for k in after}

    threads = [threading.Thread(target=measure, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in names:
        counts = {k: v for k, v in found.get(name, {}).items() if v}
        per_hour = {k: v * 3600 / window for k, v in counts.items()}
        usd = sum(PRICES.get(k, 0.0) * v for k, v in per_hour.items())
        metrics = {
            "requests_per_hour": sum(per_hour.values()),
            "by_kind_per_hour": per_hour,
            "usd_per_hour": usd,
        }
        problems = [] if name in found else ["the measurement failed"]
        yield Row(name, {"store": name, "window_s": window}, metrics, problems)


def cost_tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["store", "requests per writer-hour", "by kind", "$ per writer-hour (S3 prices)"]
    cells = [
        [
            r.params["store"],
            f"{r.metrics['requests_per_hour']:,.0f}",
            ", ".join(f"{k} {v:,.0f}" for k, v in r.metrics["by_kind_per_hour"].items()),
            f"${r.metrics['usd_per_hour']:.5f}" if r.params["store"] != "file" else "free",
        ]
        for r in rows
    ]
    return {"": (headers, cells)}


def tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["store", "cancel check", "trials", "median", "p95", "worst"]
    headers += ["until the worker exited (median)", "goal"]
    cells = [
        [
            r.params["store"],
            f"every {r.params['check_s']:g} s",
            str(r.metrics["trials"]),
            ms(r.metrics["p50_ms"]),
            ms(r.metrics["p95_ms"]),
            ms(r.metrics["max_ms"]),
            ms(r.metrics["exit_p50_ms"]),
            verdict(r),
        ]
        for r in rows
    ]
    return {"": (headers, cells)}
