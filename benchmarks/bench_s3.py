"""Issue 4 on S3 (moto's server): a 1M burst against Dagster Pipes, trickle latency and cost,
and what an idle session costs. Everything runs against one local moto server.

Scenarios (--only):

  burst      One worker sends N small custom messages ({"i": i}) through the real
             ``pipes-bus run --bus s3://... --events FILE``; the events file is checked
             (every message exactly once, in order). Median wall time of --repeat runs.
             Then, on the same server, Dagster Pipes with its DEFAULT S3 settings does the
             same: PipesSubprocessClient(message_reader=PipesS3MessageReader(bucket,
             client=boto3.client("s3"))) in a materialized asset, the worker using
             open_dagster_pipes(message_writer=PipesS3MessageWriter(boto3.client("s3")))
             (see _reference.py). Its time is PipesSubprocessClient.run (launch to the last
             message read; Dagster's own run machinery is excluded). Reports both, the
             messages the reference delivered of those sent, and the ratio.
             Target (issue 4): pipes_bus >= 10x faster (full size: 1,000,000 messages).
  trickle    100 messages/s for S seconds, each carrying time.time() at emit, read live
             from ``pipes-bus run --events -``; with default settings and with the
             documented low-latency setting ``--linger 0.02 --poll 0.02``. Emit-to-event
             latency p50/p99. The store is reached through a counting proxy, so every
             request (worker and orchestrator, retries included) is counted by kind over
             the steady part of the run and priced at S3 Standard rates ($0.005 per 1k
             PUT/LIST, $0.0004 per 1k GET): requests/s and $ per hour. Run again with
             --trickle-rtt-ms added to every request by the proxy (moto answers in ~3 ms;
             real S3 in tens of ms).
             Targets (issue 4): median <= 1 s (default), <= 150 ms (low latency).
  reference-trickle
             The same trickle through Dagster Pipes on S3: the writer with interval=1 and
             the default reader (the design notes' loss case), and both at their defaults.
             Sent vs delivered, latency of what was delivered, requests, and whether
             Dagster reported success.
  idle       Idle sessions of 1, 8 and 64 writers (processes that open a writer and report
             nothing) under ``pipes-bus run`` with default settings, each through its own
             counting proxy, running in the background while the trickles run (for
             --idle-seconds; the plot shows how long each takes to back off).
             Requests/s over the last --idle-window seconds before the writers close.
             Target (issue 4): <= 1 request/s once backed off, whatever the writers.

--quick shrinks everything (10,000-message burst, 3 s trickles, 1 and 8 idle writers
over 12 s); size-bound targets then show n/a.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _checks import Latencies, cdf, verify_events
from _processes import pipes_bus_cli, workload
from _proxy import KINDS, CountingProxy, cost
from _reference import ReferenceRun, run_reference
from _report import Report, Row, Target, csv, figure, num, parser, percentile, save_figure
from _stores import BUCKET, Store, open_store, s3_proxied_store
from bench_e2e import cli_summary, run_cli

# Dagster is an optional benchmark dependency: without it, only pipes_bus is measured.
HAVE_DAGSTER = all(importlib.util.find_spec(m) for m in ("dagster", "dagster_pipes", "dagster_aws"))
LOW_LATENCY = ["--linger", "0.02", "--poll", "0.02"]
PROFILES: dict[str, list[str]] = {"default": [], "low-latency": LOW_LATENCY}
P50_TARGETS = {"default": 1000.0, "low-latency": 150.0}


@dataclass
class Settings:
    quick: bool
    burst: int
    repeat: int
    reference_repeat: int
    trickle_rate: float
    trickle_seconds: float
    trickle_rtts: list[float]
    reference_trickle_seconds: float
    reference_default_seconds: float
    idle_writers: list[int]
    idle_window: float
    idle_seconds: float
    only: list[str] = field(default_factory=list)


def _latency_metrics(ms: list[float]) -> dict[str, Any]:
    ms = sorted(ms)
    return {
        **{f"p{q}_ms": percentile(ms, q / 100) for q in (50, 90, 99)},
        "max_ms": ms[-1] if ms else None,
    }


def _rates(proxy: CountingProxy, start: float, end: float) -> dict[str, Any]:
    """Requests by kind over [start, end] of the proxy's clock, per second and $ per hour."""
    counts, seconds = proxy.window(start, end)
    seconds = max(seconds, 1e-9)
    per_s = {k: v / seconds for k, v in counts.items() if v}
    return {
        "window_s": round(seconds, 1),
        "requests_window": counts,
        "requests_per_s": sum(per_s.values()),
        "requests_per_s_by_kind": {k: round(v, 3) for k, v in per_s.items()},
        "requests_per_hour": {k: round(v * 3600) for k, v in per_s.items()},
        "usd_per_hour": cost({k: v * 3600 for k, v in per_s.items()}),
    }


# --- burst ---------------------------------------------------------------------------------


def burst(s: Settings, tmp: Path) -> list[Row]:
    n = s.burst
    walls: list[float] = []
    problems: list[str] = []
    chosen: dict[str, Any] = {}
    with open_store("s3") as store:
        runs = []
        for k in range(s.repeat):
            events = tmp / "events.jsonl"
            events.unlink(missing_ok=True)
            run = run_cli(store, ["burst", "--count", str(n)], tmp, events=str(events))
            counts, found = verify_events(events, 1, n)
            events.unlink(missing_ok=True)
            problems += [f"run {k + 1}: {p}" for p in run.problems() + found]
            runs.append((run, counts))
            walls.append(round(run.wall_s, 3))
        runs.sort(key=lambda rc: rc[0].wall_s)
        run, counts = runs[len(runs) // 2]
        chosen = {
            "wall_s": run.wall_s,
            "msgs_per_s": n / run.wall_s,
            **counts,
            "errors": sum(c["errors"] for _, c in runs),
            "wall_s_all": walls,
            **cli_summary(run),
            "orchestrator_peak_mib": run.orchestrator_peak_mib,
            "worker_peak_mib": run.worker.get("peak_rss_mib"),
            "worker_emit_s": run.worker.get("seconds"),
        }
    ours = Row(
        "burst",
        {"system": "pipes_bus", "store": "s3 (moto)", "messages": n, "repeat": s.repeat},
        metrics=chosen,
        problems=problems,
        targets=[Target("errors", "<=", 0, source="issue 4")],
    )
    if not HAVE_DAGSTER:
        return [ours]
    refs: list[ReferenceRun] = []
    for _ in range(s.reference_repeat):
        refs.append(
            run_reference(["burst", "--count", str(n)], reader="s3", tmp=tmp, bucket=BUCKET)
        )
    refs.sort(key=lambda r: r.run_s)
    ref = refs[len(refs) // 2]
    theirs = Row(
        "burst",
        {
            "system": "dagster-pipes",
            "store": "s3 (moto)",
            "messages": n,
            "repeat": s.reference_repeat,
        },
        metrics={
            "wall_s": ref.run_s,
            "total_s": ref.total_s,
            "wall_s_all": [round(r.run_s, 3) for r in refs],
            "msgs_per_s": len(ref.payloads) / ref.run_s if ref.run_s else None,
            "sent": ref.worker.get("sent"),
            "delivered": len(ref.payloads),
            "delivered_all": [len(r.payloads) for r in refs],
            "lost": (ref.worker.get("sent") or n) - len(ref.payloads),
            "reported_success": ref.success,
            "dagster_warnings": ref.problems[:5],
            "worker_emit_s": ref.worker.get("seconds"),
        },
    )
    ratio = ref.run_s / chosen["wall_s"] if chosen.get("wall_s") else None
    compare = Row(
        "burst-ratio",
        {"system": "dagster-pipes / pipes_bus", "store": "s3 (moto)", "messages": n},
        metrics={"ratio": ratio, "pipes_bus_s": chosen.get("wall_s"), "reference_s": ref.run_s},
        targets=[Target("ratio", ">=", 10, source="issue 4", full_only=True)],
    )
    return [ours, theirs, compare]


# --- trickle -------------------------------------------------------------------------------


def trickle(s: Settings, tmp: Path, profile: str, rtt: float = 0.0) -> Row:
    sent = int(s.trickle_rate * s.trickle_seconds)
    got = Latencies()
    with s3_proxied_store(rtt=rtt) as store:
        proxy: CountingProxy = store.proxy
        started = proxy.now()
        run = run_cli(
            store,
            ["trickle", "--rate", str(s.trickle_rate), "--seconds", str(s.trickle_seconds)],
            tmp,
            events="-",
            on_line=got.line_handler(),
            options=PROFILES[profile],
        )
        # Steady state: from 2 s in (the worker is up and trickling) to the last message.
        rates = _rates(proxy, started + 2.0, started + 1.0 + s.trickle_seconds)
        total = proxy.snapshot()
    lost = sent - len(got.seen)
    problems = run.problems()
    if lost or got.duplicates:
        problems.append(f"{lost} lost, {got.duplicates} duplicated of {sent}")
    where = f"s3 (moto, +{rtt * 1000:.0f} ms per request)" if rtt else "s3 (moto)"
    return Row(
        "trickle",
        {
            "system": "pipes_bus",
            "store": where,
            "rtt_ms": rtt * 1000,
            "setting": profile,
            "options": " ".join(PROFILES[profile]) or "(defaults)",
            "rate": s.trickle_rate,
            "seconds": s.trickle_seconds,
        },
        metrics={
            "sent": sent,
            "delivered": len(got.seen),
            "errors": lost + got.duplicates,
            **_latency_metrics(got.ms),
            **rates,
            "requests_total": total,
            **cli_summary(run),
        },
        problems=problems,
        targets=[
            Target("p50_ms", "<=", P50_TARGETS[profile], source="issue 4"),
            Target("errors", "<=", 0, source="issue 4"),
        ],
        series={"latency_cdf": cdf(got.ms, sent)},
    )


def reference_trickle(s: Settings, tmp: Path, interval: float | None, seconds: float) -> Row:
    """Dagster Pipes on S3 at 100 msg/s; its boto3 clients go through a counting proxy."""
    with s3_proxied_store() as store:
        proxy: CountingProxy = store.proxy
        saved = os.environ["AWS_ENDPOINT_URL_S3"]
        os.environ["AWS_ENDPOINT_URL_S3"] = proxy.url  # both the reader's and the worker's
        started = proxy.now()
        try:
            ref = run_reference(
                ["trickle", "--rate", str(s.trickle_rate), "--seconds", str(seconds)],
                reader="s3",
                tmp=tmp,
                bucket=BUCKET,
                writer_interval=interval,
            )
        finally:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved
        rates = _rates(proxy, started + 3.0, started + seconds)
    got = Latencies()
    for when, payload in ref.received_at:
        got.add(payload, when)
    sent = ref.worker.get("sent") or int(s.trickle_rate * seconds)
    setting = "writer interval=1, reader default" if interval else "defaults (interval 10 s)"
    return Row(
        "reference-trickle",
        {
            "system": "dagster-pipes",
            "store": "s3 (moto)",
            "setting": setting,
            "options": f"interval={interval:g}" if interval else "(defaults)",
            "rate": s.trickle_rate,
            "seconds": seconds,
        },
        metrics={
            "sent": sent,
            "delivered": len(ref.payloads),
            "lost": sent - len(ref.payloads),
            "reported_success": ref.success,
            "wall_s": ref.run_s,
            "dagster_warnings": ref.problems[:5],
            **_latency_metrics(got.ms),
            **rates,
        },
        series={"latency_cdf": cdf(got.ms, sent)},
    )


# --- idle ----------------------------------------------------------------------------------


@dataclass
class IdleSession:
    writers: int
    store: Store
    process: subprocess.Popen[bytes]
    stderr: Path
    until_t: float  # the writers close at this time on the proxy's clock


def start_idle(s: Settings, stack: contextlib.ExitStack, tmp: Path) -> list[IdleSession]:
    """Launch one idle session per writer count; they run in the background."""
    sessions = []
    for writers in s.idle_writers:
        store = stack.enter_context(s3_proxied_store())
        until = time.time() + s.idle_seconds
        until_t = store.proxy.now() + s.idle_seconds
        stderr = tmp / f"idle-{writers}.txt"
        argv = [
            *pipes_bus_cli(),
            "run",
            "--bus",
            store.url,
            *store.storage_args(),
            "--",
            *workload(
                "idle",
                "--procs",
                str(writers),
                "--until",
                f"{until:.3f}",
                "--preload",
                "pipes_bus_s3",
            ),
        ]
        with open(stderr, "wb") as err:
            process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **store.env}
            )
        sessions.append(IdleSession(writers, store, process, stderr, until_t))
    # Let every writer open (each puts its `opened` chunk) before timing anything else.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        x.store.proxy.snapshot()["put"] < x.writers for x in sessions
    ):
        time.sleep(0.2)
    return sessions


def finish_idle(s: Settings, sessions: list[IdleSession]) -> list[Row]:
    rows = []
    for x in sessions:
        try:
            code = x.process.wait(timeout=s.idle_seconds + 120)
        except subprocess.TimeoutExpired:
            x.process.kill()
            code = x.process.wait()
        proxy: CountingProxy = x.store.proxy
        end = x.until_t - 1.0
        rates = _rates(proxy, end - s.idle_window, end)
        # Requests/s averaged over the trailing 60 s (the start: since the session
        # started), every 5 s, for the plot: watch the backoff happen.
        bins = []
        t = 5.0
        while t <= end:
            counts, seconds = proxy.window(max(0.0, t - 60), t)
            bins.append([round(t, 1), round(sum(counts.values()) / max(seconds, 1e-9), 3)])
            t += 5
        # When the trailing 60 s average went under 1 request/s for good.
        over = [b[0] for b in bins if b[0] >= 60 and b[1] > 1.0]
        settled = [b[0] for b in bins if b[0] >= 60 and (not over or b[0] > over[-1])]
        backed_off_at = settled[0] if settled else None
        text = x.stderr.read_text(errors="replace")
        problems = (
            []
            if code == 0
            else [f"the idle session exited {code}: {text.strip().splitlines()[-1:]}"]
        )
        rows.append(
            Row(
                "idle",
                {
                    "system": "pipes_bus",
                    "store": "s3 (moto)",
                    "setting": "default",
                    "writers": x.writers,
                    "window_s": s.idle_window,
                    "idle_s": s.idle_seconds,
                },
                metrics={
                    **rates,
                    "requests_total": proxy.snapshot(),
                    "idle_requests_per_minute": rates["requests_per_s"] * 60,
                    "under_1_per_s_after_s": backed_off_at,
                    "cli_requests": cli_summary_text(text),
                },
                problems=problems,
                targets=[Target("requests_per_s", "<=", 1.0, source="issue 4", full_only=True)],
                series={"rate_60s": bins},
            )
        )
    return rows


def cli_summary_text(text: str) -> int | None:
    """The orchestrator's request count from a CLI summary line, if there is one."""
    found = re.search(r"(\d+) store requests", text)
    return int(found.group(1)) if found else None


# --- plots and table -----------------------------------------------------------------------


def plot(report: Report) -> None:
    lat = [
        r
        for r in report.rows
        if r.scenario in ("trickle", "reference-trickle") and r.series.get("latency_cdf")
    ]
    if lat:
        fig, ax = figure(
            "S3 (moto), 100 msg/s: emit-to-delivery latency (CDF)",
            "latency (ms, log scale)",
            "fraction of messages sent",
            size=(9, 6),
        )
        for row in lat:
            points = row.series["latency_cdf"]
            m, p = row.metrics, row.params
            rtt = f" +{p['rtt_ms']:g} ms/request" if p.get("rtt_ms") else ""
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                linestyle="--" if rtt else "-",
                label=f"{p['system']} {p['setting']}{rtt}: p50 {num(m['p50_ms'])} ms, "
                f"{m['delivered']:,}/{m['sent']:,} delivered",
            )
        ax.axvline(1000, color="grey", linestyle=":", label="1 s")
        ax.axvline(150, color="red", linestyle=":", label="150 ms")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        save_figure(fig, report.path("trickle_latency.png"))
    idle = [r for r in report.rows if r.scenario == "idle"]
    if idle:
        fig, ax = figure(
            "S3 (moto): requests/s of an idle session (trailing 60 s average)",
            "seconds since the session started",
            "requests per second",
        )
        for row in idle:
            bins = row.series["rate_60s"]
            w = row.params["writers"]
            ax.plot(
                [b[0] for b in bins],
                [b[1] for b in bins],
                label=f"{w} writer{'s' if w != 1 else ''}: "
                f"{row.metrics['requests_per_s']:.2f} req/s over the last "
                f"{row.params['window_s']:g} s",
            )
        ax.axhline(1.0, color="red", linestyle="--", label="target: 1 request/s")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        save_figure(fig, report.path("idle_requests.png"))
    bursts = [r for r in report.rows if r.scenario == "burst"]
    if len(bursts) == 2:
        fig, ax = figure(
            f"{bursts[0].params['messages']:,} custom messages over S3 (moto), end to end",
            "",
            "seconds (median)",
            size=(6, 4),
        )
        names = [r.params["system"] for r in bursts]
        values = [r.metrics["wall_s"] for r in bursts]
        ax.bar(names, values, color=["tab:blue", "tab:orange"])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f} s", ha="center", va="bottom")
        save_figure(fig, report.path("burst.png"))


def _size(row: Row) -> str:
    p = row.params
    if row.scenario == "idle":
        plural = "s" if p["writers"] != 1 else ""
        return f"{p['writers']} writer{plural}, last {p['window_s']:g} s of {p['idle_s']:g} s"
    if "rate" in p:
        extra = f", +{p['rtt_ms']:g} ms/request" if p.get("rtt_ms") else ""
        return f"{p['rate']:g}/s x {p['seconds']:g} s{extra}"
    return f"{p['messages']:,}"


def _detail(row: Row) -> str:
    m = row.metrics
    if row.scenario == "burst":
        walls = m.get("wall_s_all", [])
        text = f"{m['wall_s']:.2f} s" + (
            f" ({'/'.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else ""
        )
        if row.params["system"] == "pipes_bus":
            return (
                f"{text}; {m['delivered']:,} delivered, {m['errors']} errors; "
                f"orchestrator {num(m.get('orchestrator_requests'))} requests"
            )
        return (
            f"{text}; {m['delivered']:,}/{m['sent'] or 0:,} delivered; "
            f"{'success' if m['reported_success'] else 'FAILED'} reported"
        )
    if row.scenario == "burst-ratio":
        return f"{num(m['ratio'], 1)}x ({m['reference_s']:.2f} s / {m['pipes_bus_s']:.2f} s)"
    if row.scenario in ("trickle", "reference-trickle"):
        return (
            f"p50 {num(m['p50_ms'])} p99 {num(m['p99_ms'])} max {num(m['max_ms'])} ms; "
            f"{m['delivered']:,}/{m['sent']:,} delivered"
        )
    if row.scenario == "idle":
        return f"{m['requests_per_s']:.3f} req/s ({m['idle_requests_per_minute']:.1f}/min)"
    return "-"


def _requests(row: Row) -> str:
    by_kind = row.metrics.get("requests_per_s_by_kind")
    if by_kind is None:
        return "-"
    parts = " ".join(f"{k}={v:.2f}" for k, v in by_kind.items() if k in KINDS)
    return f"{row.metrics['requests_per_s']:.2f}/s ({parts})"


COLUMNS = [
    ("scenario", lambda r: r.scenario),
    ("system", lambda r: r.params["system"]),
    ("setting", lambda r: r.params.get("options", r.params.get("setting", "-"))),
    ("size", _size),
    ("result", _detail),
    ("requests/s (steady)", _requests),
    (
        "$/hour",
        lambda r: f"{r.metrics['usd_per_hour']:.4f}" if "usd_per_hour" in r.metrics else "-",
    ),
]


def main() -> int:
    p = parser(__doc__ or "")
    scenarios = ["burst", "trickle", "reference-trickle", "idle"]
    p.add_argument(
        "--only",
        type=csv(str),
        default=scenarios,
        help=f"scenarios, comma-separated (default: {','.join(scenarios)})",
    )
    p.add_argument("--burst", type=int, help="burst messages (default 1,000,000; quick 10,000)")
    p.add_argument("--repeat", type=int, help="pipes_bus burst runs (default 3; quick 1)")
    p.add_argument("--reference-repeat", type=int, help="Dagster Pipes burst runs (default 1)")
    p.add_argument("--trickle-seconds", type=float, help="default 15; quick 3")
    p.add_argument(
        "--trickle-rtt-ms",
        type=csv(float),
        help="also run the trickles with this latency added to every request, "
        "like a remote store's round trip (default 0,30; quick 0)",
    )
    p.add_argument(
        "--reference-trickle-seconds",
        type=float,
        help="Dagster Pipes interval=1 trickle (default 60; quick 3)",
    )
    p.add_argument(
        "--reference-default-seconds",
        type=float,
        help="Dagster Pipes trickle with defaults (default 30; quick: skipped, 0)",
    )
    p.add_argument("--idle-writers", type=csv(int), help="default 1,8,64; quick 1,8")
    p.add_argument(
        "--idle-window",
        type=float,
        help="seconds measured, at the end (default 150: longer than one probe "
        "period of an idle 64-writer session; quick 6)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        help="how long the idle writers stay open (default 220; quick 12)",
    )
    args = p.parse_args()
    q = args.quick
    s = Settings(
        quick=q,
        burst=args.burst or (10_000 if q else 1_000_000),
        repeat=args.repeat or (1 if q else 3),
        reference_repeat=args.reference_repeat or 1,
        trickle_rate=100.0,
        trickle_seconds=args.trickle_seconds or (3.0 if q else 15.0),
        trickle_rtts=[
            ms / 1000
            for ms in (
                args.trickle_rtt_ms if args.trickle_rtt_ms is not None else ([0] if q else [0, 30])
            )
        ],
        reference_trickle_seconds=args.reference_trickle_seconds or (3.0 if q else 60.0),
        reference_default_seconds=(
            args.reference_default_seconds
            if args.reference_default_seconds is not None
            else (0.0 if q else 30.0)
        ),
        idle_writers=args.idle_writers or ([1, 8] if q else [1, 8, 64]),
        idle_window=args.idle_window or (6.0 if q else 150.0),
        idle_seconds=args.idle_seconds or (12.0 if q else 220.0),
        only=args.only,
    )
    report = Report(
        "s3", "bench_s3: issue 4 on S3 (moto): burst vs Dagster Pipes, trickle, idle cost", args
    )
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        if "burst" in s.only:
            print("running burst ...", file=sys.stderr, flush=True)
            for row in burst(s, tmp):
                report.add(row)
        # The idle sessions then run in the background while the trickles are measured:
        # they are cheap once backed off, and every writer has opened before anything
        # else is timed. (Not during the burst: an idle session polls fast at first.)
        idle = start_idle(s, stack, tmp) if "idle" in s.only else []
        if "trickle" in s.only:
            for rtt in s.trickle_rtts:
                for profile in PROFILES:
                    print(
                        f"running trickle ({profile}, +{rtt * 1000:g} ms) ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    report.add(trickle(s, tmp, profile, rtt))
        if "reference-trickle" in s.only and not HAVE_DAGSTER:
            print(
                "skipping the Dagster Pipes scenarios: pip install -e '.[bench]'", file=sys.stderr
            )
        elif "reference-trickle" in s.only:
            print("running the reference trickle ...", file=sys.stderr, flush=True)
            report.add(reference_trickle(s, tmp, 1.0, s.reference_trickle_seconds))
            if s.reference_default_seconds > 0:
                report.add(reference_trickle(s, tmp, None, s.reference_default_seconds))
        if idle:
            print("waiting for the idle sessions ...", file=sys.stderr, flush=True)
            for row in finish_idle(s, idle):
                report.add(row)
    plot(report)
    return report.finish(COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
