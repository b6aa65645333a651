"""Reliability under injected faults: nothing lost, nothing duplicated, for minutes on end.

The fault mix: 15% of requests answered ``503 SlowDown`` without reaching the store, 5%
of connections dropped (half of them after the store handled the request, so a write may
have happened although the client saw an error), and a 2.5 s outage every 8 s in which
every request fails. botocore's own retries give up inside such an outage; pipes_bus's
retry policy has to carry it.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _checks import EventCheck
from _core import (
    DASH,
    Context,
    Results,
    Row,
    Table,
    Target,
    figure,
    kinds,
    save_figure,
    verdict,
)
from _procs import checked
from _stores import Store, open_store, s3_proxied

from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Custom, Opened, WriterInfo
from pipes_bus.testing import FaultPlan, FaultyTransport
from pipes_bus.testing.fault_proxy import ProxyFaults

EVERY, FOR = 8.0, 2.5  # an outage of FOR seconds every EVERY seconds
EXACT = Target(
    "errors",
    "<=",
    0,
    goal="Under faults, every message arrives exactly once and in order, and the run exits 0",
    shown="{delivered:,} delivered: {lost} lost, {duplicates} duplicated, {out_of_order} late",
)


def _proxy_faults(seed: int) -> ProxyFaults:
    return ProxyFaults(slow_down=0.15, drop=0.05, outage_every=EVERY, outage_for=FOR, seed=seed)


def faulty(ctx: Context) -> Iterator[Row]:
    """Faults in process: FaultyTransport under a writer and a following reader

    No HTTP: a ChunkWriter and a SessionReader over ``pipes_bus.testing.FaultyTransport``
    wrapping memory:// and a local directory (15% transient errors, 5% of puts whose answer
    is lost after the write, 2% timeouts, 2.5 s outages every 8 s), small chunks so that
    there are many; every event checked.
    """
    n = ctx.opt("count", 50_000, quick=10_000)
    outages = tuple((t, t + FOR) for t in range(2, 600, int(EVERY)))
    for name in ("memory", "file"):
        with open_store(name) as store:
            session = f"s-faulty-{secrets.token_hex(6)}"
            plan = {"error": 0.15, "lost_reply": 0.05, "timeout": 0.02, "outages": outages}
            wt, rt = (FaultyTransport(store.transport(), FaultPlan(**plan, seed=k)) for k in (1, 2))
            writer = ChunkWriter(wt, session, "w-faulty", WriterSettings(chunk_bytes=16 * 1024))
            check = EventCheck(1, n)
            follow = map(check.add_event, SessionReader(rt, session).follow())
            reader = threading.Thread(target=deque, args=(follow, 0))
            started = time.perf_counter()
            reader.start()
            writer.write(Opened(time=time.time(), info=WriterInfo(id="w-faulty")))
            for i in range(n):
                writer.write(Custom(time=time.time(), payload={"i": i, "v": "x" * 40}))
            writer.close()
            reader.join()
            seconds = time.perf_counter() - started
        counts, problems = check.result()
        injected = {k: wt.injected.get(k, 0) + rt.injected.get(k, 0) for k in wt.injected}
        metrics = {**counts, "expected": n, "seconds": seconds, "msgs_per_s": n / seconds}
        metrics |= {"chunks": writer.chunks_published, "injected": injected}
        label = f"{name} through FaultyTransport, {n:,} messages"
        yield Row(label, {"store": name, "messages": n}, metrics, problems, [EXACT])


def _fanin(writers: int, per_writer: int, rate: float) -> list[str]:
    return ["fanin", "--procs", str(writers), "--count", str(per_writer), "--rate", f"{rate:g}"]


def _at_store(store: Store, seconds: float) -> dict[str, Any]:
    requests, injected = store.proxy.snapshot(), store.proxy.injected
    total = sum(requests.values())
    faults = sum(injected.get(k, 0) for k in ("slow_down", "drop", "outage"))
    return {
        "requests": {k: v for k, v in requests.items() if v},
        "requests_total": total,
        "requests_per_s": total / seconds if seconds else None,
        "injected": injected,
        "injected_share": round(faults / total, 3) if total else None,
    }


def faults(ctx: Context) -> Iterator[Row]:
    """100,000 messages from 4 writers through the fault proxy in front of S3

    Every request goes through ``pipes_bus.testing.fault_proxy.FaultProxy`` in front of
    moto (see above for the mix), behind a counting proxy. 4 writer processes x 25,000
    messages, paced over about 20 s so that chunks are published across several outages,
    under ``pipes-bus run --events FILE``; every event checked, the exit status too.
    """
    per = ctx.opt("messages", 100_000, quick=2_000) // 4
    rate = per / ctx.opt("seconds", 20.0, quick=2.0)
    with s3_proxied(_proxy_faults(seed=5)) as store:
        args = [*_fanin(4, per, rate), "--pad", "40", *store.preload()]
        metrics, problems = checked(store, args, ctx.tmp, 4, per, watch_interval=0.25)
        metrics |= {**_at_store(store, metrics["wall_s"]), "expected": 4 * per}
    metrics["errors"] += metrics["exit_code"] != 0
    params = {"store": "s3", "writers": 4, "per_writer": per, "rate_per_writer": round(rate)}
    label = f"s3 through the fault proxy, 4 writers x {per:,}"
    yield Row(label, params, metrics, problems, [EXACT])


def soak(ctx: Context) -> Iterator[Row]:
    """A multi-minute soak: concurrent sessions back to back through the fault proxy

    ``lanes`` lanes, each starting sessions one after another for ``minutes``: every
    session is ``pipes-bus run`` with ``writers`` worker processes that each trickle
    ``per_writer`` messages at ``rate``/s, every session's events checked. Sessions,
    messages delivered, duplicates, losses, out-of-order deliveries, sessions that did
    not exit 0, peak memory, and requests with the faults the proxy injected.
    """
    lanes, minutes = ctx.opt("lanes", 3, quick=2), ctx.opt("minutes", 2.5, quick=0.05)
    writers, per = ctx.opt("writers", 3, quick=2), ctx.opt("per_writer", 4000, quick=200)
    rate = ctx.opt("rate", 200.0, quick=100.0)
    done: list[tuple[int, float, dict[str, Any], list[str]]] = []

    def lane(k: int, store: Store) -> None:
        args = [*_fanin(writers, per, rate), "--pad", "40", *store.preload()]
        (ctx.tmp / f"lane-{k}").mkdir(exist_ok=True)
        while time.monotonic() < t0 + minutes * 60:
            started = time.monotonic() - t0
            found = checked(store, args, ctx.tmp / f"lane-{k}", writers, per, watch_interval=0.5)
            done.append((k, started, *found))

    with s3_proxied(_proxy_faults(seed=7)) as store:
        t0 = time.monotonic()
        threads = [threading.Thread(target=lane, args=(k, store)) for k in range(lanes)]
        for thread in threads:
            thread.start()
            time.sleep(1.0)  # stagger the lanes
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - t0
        at_store, samples = _at_store(store, seconds), store.proxy.samples
    done.sort(key=lambda o: o[1])
    runs = [m for _, _, m, _ in done]
    keys = ("delivered", "duplicates", "lost", "out_of_order", "faults", "errors")
    metrics = {k: sum(m[k] for m in runs) for k in keys}
    metrics |= {
        "sessions": len(runs),
        "expected": len(runs) * writers * per,
        "sessions_not_exit_0": sum(m["exit_code"] != 0 for m in runs),
        "seconds": seconds,
        "orchestrator_peak_mib": max((m["orchestrator_peak_mib"] for m in runs), default=0),
        "largest_process_peak_mib": max((m["largest_process_peak_mib"] for m in runs), default=0),
        "session_wall_s": [round(m["wall_s"], 1) for m in runs],
        **at_store,
    }
    metrics["errors"] += metrics["sessions_not_exit_0"]
    problems = [
        f"session {i + 1} (lane {k}): {p}" for i, (k, _, _, ps) in enumerate(done) for p in ps
    ]
    series = {
        "requests": [
            [round(t, 1), sum(c.values())] for t, c, _ in samples[:: max(1, len(samples) // 300)]
        ],
        "sessions": [
            [round(s, 1), round(m["wall_s"], 2), k, m["delivered"]] for k, s, m, _ in done
        ],
    }
    params = {"store": "s3", "minutes": minutes, "lanes": lanes, "writers": writers}
    params |= {"per_writer": per, "rate": rate}
    label = f"s3 through the fault proxy, {len(runs)} sessions in {seconds / 60:.1f} min"
    label += f", {lanes} at a time"
    yield Row(label, params, metrics, problems, [EXACT], series)


def tables(rows: list[Row]) -> dict[str, Table]:
    cells = []
    for r in rows:
        m, inj = r.metrics, r.metrics.get("injected", {})
        if "requests_total" in m:
            at_store = f"{m['requests_total']:,} ({kinds(m['requests'])}); injected "
            at_store += f"{inj['slow_down']:,} x 503, {inj['drop']:,} drops, "
            at_store += f"{inj['outage']:,} in outages ({m['injected_share']:.0%})"
        else:
            at_store = "injected " + ", ".join(f"{v:,} {k}" for k, v in inj.items())
        if "sessions" in m:
            outcome = f"{m['sessions_not_exit_0']} sessions not exit 0"
        else:
            outcome = f"exit {m['exit_code']}" if "exit_code" in m else f"{m['chunks']:,} chunks"
        peaks = DASH
        if "orchestrator_peak_mib" in m:
            peaks = f"{m['orchestrator_peak_mib']:.0f} / {m['largest_process_peak_mib']:.0f}"
        counts = [str(m[k]) for k in ("duplicates", "lost", "out_of_order")]
        delivered = f"{m['delivered']:,} of {m['expected']:,}"
        cells.append([r.label, delivered, *counts, outcome, peaks, at_store, verdict(r)])
    headers = ["run", "delivered", "duplicates", "lost", "out of order", "outcome"]
    headers += ["peak RSS MiB orchestrator / worker", "requests at the store", "goal"]
    return {"": (headers, cells)}


def soak_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    row = rows[0]
    title = f"Soak: {row.metrics['sessions']} sessions through the fault proxy"
    fig, ax = figure(title, "seconds", "requests per second")
    samples = row.series["requests"]
    per_s = [(b[0], (b[1] - a[1]) / max(b[0] - a[0], 1e-9)) for a, b in itertools.pairwise(samples)]
    ax.plot([t for t, _ in per_s], [v for _, v in per_s], lw=0.8, label="requests/s at the proxy")
    end = per_s[-1][0] if per_s else 0
    for k, t in enumerate(
        itertools.takewhile(lambda t: t < end, itertools.count(EVERY - FOR, EVERY))
    ):
        label = None if k else "outage (every request fails)"
        ax.axvspan(t, t + FOR, color="red", alpha=0.12, label=label)
    ax2 = ax.twinx()
    for k, (start, wall, lane, delivered) in enumerate(row.series["sessions"]):
        color = ("tab:green", "tab:olive")[k % 2]
        ax2.plot([start + 0.4, start + wall - 0.4], [lane, lane], lw=6, color=color, alpha=0.7)
        ax2.text(start + wall / 2, lane + 0.15, f"{delivered:,}", ha="center", fontsize=6)
    ax2.set_ylabel("sessions by lane (messages delivered, each checked)")
    ax2.set_yticks(range(row.params["lanes"]))
    ax2.set_ylim(-0.5, row.params["lanes"] + 0.5)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path("soak.png"))


def compare(results: Results) -> list[list[str]]:
    target, soaked = results.rows("faults"), results.rows("soak")
    if not (target and soaked):
        return []
    t, s = target[0].metrics, soaked[0].metrics
    ours = f"{t['delivered']:,} of {t['expected']:,} exactly once in order, exit {t['exit_code']}; "
    ours += f"a soak: {s['delivered']:,} messages in {s['sessions']} sessions, "
    ours += f"{s['duplicates']} duplicated, {s['lost']} lost"
    case = "Faults: 15% 503, 5% dropped connections, 2.5 s outages every 8 s"
    return [[case, "not measured (no retry beyond the SDK's)", ours]]
