"""Issue 5: reliability under faults. Nothing lost, nothing duplicated, for minutes on end.

Every S3 request goes through pipes_bus's FaultProxy (``pipes_bus.testing``, here with
request counting, see _proxy.py) in front of moto's S3 server. It answers 15% of requests
``503 SlowDown`` without forwarding them, drops 5% of connections (half of them before the
store saw the request, half after it handled it, so a write may have happened although the
client saw an error), and goes dark for 2.5 s every 8 s (every request then fails, 503 or
dropped). botocore's own retries give up inside such an outage; pipes_bus's retry policy
has to carry it.

Scenarios (--only):

  target   The issue-5 target: 100,000 messages (4 writer processes x 25,000, paced over
           about 20 s so that chunks are published across several outages) through
           ``pipes-bus run --events FILE``. Checks that every message arrived exactly once
           and in order per writer, and that the command exited 0.
  soak     --lanes concurrent lanes, each starting sessions back to back for --minutes:
           every session is ``pipes-bus run`` with --writers worker processes that each
           trickle --per-writer messages at --rate messages/s. Every session's events file
           is checked as above. Reports sessions, writers, messages delivered, duplicates
           (must be 0), losses (must be 0), out-of-order deliveries (must be 0), sessions
           that did not exit 0, peak memory of the orchestrator (the CLI process) and of
           any worker process, and requests by kind with the faults the proxy injected.
  faulty   In process, no HTTP: a ChunkWriter and a following SessionReader over
           pipes_bus.testing.FaultyTransport wrapping the memory:// and file transports
           (15% transient errors, 5% of puts whose answer is lost after the write, 2%
           timeouts, 2.5 s outages every 8 s), small chunks so that there are many.
           Exactly once, in order.

--quick (a smoke run): 2,000 target messages, a 6 s soak with 2 lanes (each session started
runs to its end), 10,000 in-process messages; the issue-5 sizes are the full run's.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _checks import verify_events
from _proxy import KINDS, CountingProxy
from _report import Report, Row, Target, csv, figure, num, parser, save_figure
from _stores import Store, open_store, s3_proxied_store
from bench_e2e import cli_summary, run_cli

from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Event
from pipes_bus.testing.fault_proxy import ProxyFaults
from pipes_bus.testing.faults import FaultPlan, FaultyTransport

OUTAGE_EVERY = 8.0
OUTAGE_FOR = 2.5
NO_LOSS = [
    Target("lost", "<=", 0, source="issue 5"),
    Target("duplicates", "<=", 0, source="issue 5"),
    Target("out_of_order", "<=", 0, source="issue 5"),
]


def faults(seed: int) -> ProxyFaults:
    """The issue-5 fault mix."""
    return ProxyFaults(
        slow_down=0.15, drop=0.05, outage_every=OUTAGE_EVERY, outage_for=OUTAGE_FOR, seed=seed
    )


@dataclass
class Settings:
    quick: bool
    target_writers: int
    target_per_writer: int
    target_seconds: float
    minutes: float
    lanes: int
    writers: int
    per_writer: int
    rate: float
    faulty_count: int


def _fanin_args(writers: int, per_writer: int, rate: float) -> list[str]:
    return [
        "fanin",
        "--procs",
        str(writers),
        "--count",
        str(per_writer),
        "--rate",
        f"{rate:g}",
        "--pad",
        "40",
        "--preload",
        "pipes_bus_s3",
    ]


def _proxy_metrics(proxy: CountingProxy, seconds: float) -> dict[str, Any]:
    requests = proxy.snapshot()
    injected = proxy.faults_injected
    total = sum(requests.values())
    return {
        "requests": {k: v for k, v in requests.items() if v},
        "requests_total": total,
        "requests_per_s": total / seconds if seconds else None,
        "injected": injected,
        "injected_share": round(
            (injected["slow_down"] + injected["drop"] + injected["outage"]) / total, 3
        )
        if total
        else None,
    }


# --- target --------------------------------------------------------------------------------


def target(s: Settings, tmp: Path) -> Row:
    w, n = s.target_writers, s.target_per_writer
    rate = n / s.target_seconds
    with s3_proxied_store(faults(seed=5)) as store:
        events = tmp / "target-events.jsonl"
        events.unlink(missing_ok=True)
        run = run_cli(store, _fanin_args(w, n, rate), tmp, events=str(events), watch_interval=0.25)
        counts, problems = verify_events(events, w, n)
        events.unlink(missing_ok=True)
        metrics = {
            **counts,
            "exit_code": run.exit_code,
            "wall_s": run.wall_s,
            **_proxy_metrics(store.proxy, run.wall_s),
            **cli_summary(run),
            "orchestrator_peak_mib": run.orchestrator_peak_mib,
            "worker_peak_mib": run.worker_peak_sampled_mib,
        }
    return Row(
        "target",
        {
            "messages": w * n,
            "writers": w,
            "rate_per_writer": round(rate),
            "store": "s3 (moto) via FaultProxy",
        },
        metrics=metrics,
        problems=run.problems() + problems,
        targets=[
            Target("delivered", ">=", w * n, source="issue 5"),
            *NO_LOSS,
            Target("exit_code", "<=", 0, source="issue 5"),
        ],
    )


# --- soak ----------------------------------------------------------------------------------


@dataclass
class SessionOutcome:
    lane: int
    started: float
    wall_s: float
    exit_code: int
    counts: dict[str, int]
    problems: list[str]
    orchestrator_peak_mib: float
    worker_peak_mib: float
    orchestrator_requests: int | None


def _lane(
    lane: int,
    s: Settings,
    store: Store,
    deadline: float,
    t0: float,
    tmp: Path,
    out: list[SessionOutcome],
    lock: threading.Lock,
) -> None:
    mine = tmp / f"lane-{lane}"
    mine.mkdir()
    while time.monotonic() < deadline:
        events = mine / "events.jsonl"
        events.unlink(missing_ok=True)
        started = time.monotonic() - t0
        run = run_cli(
            store,
            _fanin_args(s.writers, s.per_writer, s.rate),
            mine,
            events=str(events),
            watch_interval=0.5,
        )
        counts, problems = verify_events(events, s.writers, s.per_writer)
        events.unlink(missing_ok=True)
        outcome = SessionOutcome(
            lane,
            started,
            run.wall_s,
            run.exit_code,
            counts,
            run.problems() + problems,
            run.orchestrator_peak_mib,
            run.worker_peak_sampled_mib,
            cli_summary(run).get("orchestrator_requests"),
        )
        with lock:
            out.append(outcome)
        print(
            f"  lane {lane}: session {len(out)} done at {started + run.wall_s:.0f} s, "
            f"{counts['delivered']:,} delivered, exit {run.exit_code}",
            file=sys.stderr,
            flush=True,
        )


def soak(s: Settings, tmp: Path) -> Row:
    outcomes: list[SessionOutcome] = []
    lock = threading.Lock()
    with s3_proxied_store(faults(seed=7)) as store:
        t0 = time.monotonic()
        deadline = t0 + s.minutes * 60
        threads = [
            threading.Thread(
                target=_lane, args=(k, s, store, deadline, t0, tmp, outcomes, lock), daemon=True
            )
            for k in range(s.lanes)
        ]
        for thread in threads:
            thread.start()
            time.sleep(1.0)  # stagger the lanes
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - t0
        proxy_metrics = _proxy_metrics(store.proxy, seconds)
        samples = store.proxy.samples
    total = len(outcomes)
    sum_of = lambda key: sum(o.counts[key] for o in outcomes)  # noqa: E731
    problems = [
        f"session {i + 1} (lane {o.lane}): {p}" for i, o in enumerate(outcomes) for p in o.problems
    ]
    metrics = {
        "sessions": total,
        "writers_total": sum(o.counts["writers"] for o in outcomes),
        "expected": total * s.writers * s.per_writer,
        "delivered": sum_of("delivered"),
        "duplicates": sum_of("duplicates"),
        "lost": sum_of("lost"),
        "out_of_order": sum_of("out_of_order"),
        "faults": sum_of("faults"),
        "sessions_not_exit_0": sum(1 for o in outcomes if o.exit_code != 0),
        "seconds": seconds,
        "orchestrator_peak_mib": max((o.orchestrator_peak_mib for o in outcomes), default=0),
        "worker_peak_mib": max((o.worker_peak_mib for o in outcomes), default=0),
        "session_wall_s": sorted(round(o.wall_s, 1) for o in outcomes),
        "orchestrator_requests": sum(o.orchestrator_requests or 0 for o in outcomes),
        **proxy_metrics,
    }
    step = max(1, len(samples) // 300)
    return Row(
        "soak",
        {
            "minutes": s.minutes,
            "lanes": s.lanes,
            "writers": s.writers,
            "per_writer": s.per_writer,
            "rate": s.rate,
            "store": "s3 (moto) via FaultProxy",
        },
        metrics=metrics,
        problems=problems,
        targets=[*NO_LOSS, Target("sessions_not_exit_0", "<=", 0, source="issue 5")],
        series={
            "requests": [[round(t, 1), sum(c.values())] for t, c in samples[::step]],
            "sessions": [
                [round(o.started, 1), round(o.wall_s, 2), o.lane, o.counts["delivered"]]
                for o in outcomes
            ],
        },
    )


# --- in process, FaultyTransport -----------------------------------------------------------


def faulty(s: Settings, name: str) -> Row:
    n = s.faulty_count
    outages = tuple((t, t + OUTAGE_FOR) for t in range(2, 600, int(OUTAGE_EVERY)))
    plan = dict(error=0.15, lost_reply=0.05, timeout=0.02, outages=outages)
    with open_store(name) as store:
        session = f"s-soak-{secrets.token_hex(6)}"
        wt = FaultyTransport(store.transport(), FaultPlan(**plan, seed=1))  # type: ignore[arg-type]
        rt = FaultyTransport(store.transport(), FaultPlan(**plan, seed=2))  # type: ignore[arg-type]
        writer = ChunkWriter(wt, session, "w-soak", WriterSettings(chunk_bytes=16 * 1024))
        reader = SessionReader(rt, session)
        got = {"delivered": 0, "duplicates": 0, "out_of_order": 0, "faults": 0}

        def follow() -> None:
            expected = 0
            seen_i = -1
            for item in reader.follow():
                if type(item) is not Event:
                    got["faults"] += 1
                    continue
                if item.seq < expected:
                    got["duplicates"] += 1
                    continue
                got["out_of_order"] += item.seq != expected
                expected = item.seq + 1
                if type(item.message) is Custom:
                    i = item.message.payload["i"]
                    got["out_of_order"] += i != seen_i + 1
                    seen_i = i
                    got["delivered"] += 1

        thread = threading.Thread(target=follow, name="reader")
        started = time.perf_counter()
        thread.start()
        for i in range(n):
            writer.write(Custom(time=time.time(), payload={"i": i, "v": "x" * 40}))
        writer.close()
        thread.join()
        seconds = time.perf_counter() - started
    injected: dict[str, int] = {}
    for t in (wt, rt):
        for k, v in t.injected.items():
            injected[k] = injected.get(k, 0) + v
    lost = n - got["delivered"]
    return Row(
        "faulty",
        {"store": f"{name} via FaultyTransport", "messages": n},
        metrics={
            **got,
            "lost": lost,
            "seconds": seconds,
            "msgs_per_s": n / seconds,
            "chunks": writer.chunks_published,
            "injected": injected,
            "requests": {**wt.stats.snapshot()["requests"]},
            "reader_requests": rt.stats.snapshot()["requests"],
        },
        problems=[
            f"{lost} lost, {got['duplicates']} duplicated, "
            f"{got['out_of_order']} out of order, {got['faults']} faults"
        ]
        if lost or got["duplicates"] or got["out_of_order"] or got["faults"]
        else [],
        targets=NO_LOSS,
    )


# --- report --------------------------------------------------------------------------------


def plot(report: Report) -> None:
    rows = [r for r in report.rows if r.scenario == "soak"]
    if not rows:
        return
    row = rows[0]
    fig, ax = figure(
        f"Soak: {row.metrics['sessions']} sessions through the fault proxy "
        f"({row.params['lanes']} lanes)",
        "seconds",
        "requests per second",
    )
    samples = row.series["requests"]
    rates = [(b[0], (b[1] - a[1]) / max(b[0] - a[0], 1e-9)) for a, b in itertools.pairwise(samples)]
    ax.plot([t for t, _ in rates], [r for _, r in rates], lw=0.8, label="requests/s at the proxy")
    end = rates[-1][0] if rates else 0
    t = OUTAGE_EVERY - OUTAGE_FOR
    first = True
    while t < end:
        ax.axvspan(
            t,
            t + OUTAGE_FOR,
            color="red",
            alpha=0.12,
            label="outage (every request fails)" if first else None,
        )
        first = False
        t += OUTAGE_EVERY
    ax2 = ax.twinx()
    for k, (start, wall, lane, delivered) in enumerate(row.series["sessions"]):
        ax2.plot(
            [start + 0.4, start + wall - 0.4],
            [lane, lane],
            lw=6,
            solid_capstyle="butt",
            color=("tab:green", "tab:olive")[k % 2],
            alpha=0.7,
        )
        ax2.text(start + wall / 2, lane + 0.15, f"{delivered:,}", ha="center", fontsize=6)
    ax2.set_ylabel("sessions by lane (messages delivered, each checked)")
    ax2.set_yticks(range(row.params["lanes"]))
    ax2.set_ylim(-0.5, row.params["lanes"] + 0.5)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, report.path("soak.png"))


def _size(row: Row) -> str:
    p, m = row.params, row.metrics
    if row.scenario == "soak":
        return (
            f"{m['sessions']} sessions x {p['writers']} writers x {p['per_writer']:,} "
            f"at {p['rate']:g}/s, {p['lanes']} lanes, {m['seconds']:.0f} s"
        )
    if row.scenario == "target":
        return f"{p['writers']} writers x {p['messages'] // p['writers']:,}"
    return f"{p['messages']:,}"


def _result(row: Row) -> str:
    m = row.metrics
    expected = m.get("expected", row.params.get("messages"))
    text = (
        f"{m['delivered']:,}/{expected:,} delivered, {m['duplicates']} dup, "
        f"{m['lost']} lost, {m['out_of_order']} out of order"
    )
    if row.scenario == "target":
        text += f"; exit {m['exit_code']} in {m['wall_s']:.1f} s"
    if row.scenario == "soak":
        text += f"; {m['sessions_not_exit_0']} sessions not exit 0"
    return text


def _requests(row: Row) -> str:
    m = row.metrics
    if "injected_share" in m:
        req = m["requests"]
        inj = m["injected"]
        return (
            f"{m['requests_total']:,} ({' '.join(f'{k}={req[k]:,}' for k in KINDS if k in req)}"
            f"); injected: {inj['slow_down']:,} 503, {inj['drop']:,} drops, "
            f"{inj['outage']:,} in outages ({m['injected_share']:.0%})"
        )
    inj = m.get("injected", {})
    return "injected: " + ", ".join(f"{v:,} {k}" for k, v in inj.items())


COLUMNS = [
    ("scenario", lambda r: r.scenario),
    ("store", lambda r: r.params["store"]),
    ("size", _size),
    ("result", _result),
    (
        "peak MiB orch./worker",
        lambda r: (
            f"{num(r.metrics.get('orchestrator_peak_mib'), 1)} / "
            f"{num(r.metrics.get('worker_peak_mib'), 1)}"
            if "orchestrator_peak_mib" in r.metrics
            else "-"
        ),
    ),
    ("requests (at the store)", _requests),
]


def main() -> int:
    p = parser(__doc__ or "")
    scenarios = ["target", "soak", "faulty"]
    p.add_argument(
        "--only",
        type=csv(str),
        default=scenarios,
        help=f"scenarios, comma-separated (default: {','.join(scenarios)})",
    )
    p.add_argument("--target-messages", type=int, help="default 100,000; quick 2,000")
    p.add_argument(
        "--minutes",
        type=float,
        help="soak length: sessions start until then (default 2.5; quick 0.1)",
    )
    p.add_argument("--lanes", type=int, help="concurrent sessions (default 3; quick 2)")
    p.add_argument("--writers", type=int, help="worker processes per session (default 3; quick 2)")
    p.add_argument("--per-writer", type=int, help="messages per writer (default 4,000; quick 200)")
    p.add_argument("--rate", type=float, help="messages/s per writer (default 200; quick 100)")
    p.add_argument(
        "--faulty-count", type=int, help="in-process messages (default 50,000; quick 10,000)"
    )
    args = p.parse_args()
    q = args.quick
    target_messages = args.target_messages or (2_000 if q else 100_000)
    s = Settings(
        quick=q,
        target_writers=4,
        target_per_writer=target_messages // 4,
        target_seconds=2.0 if q else 20.0,
        minutes=args.minutes or (0.1 if q else 2.5),
        lanes=args.lanes or (2 if q else 3),
        writers=args.writers or (2 if q else 3),
        per_writer=args.per_writer or (200 if q else 4000),
        rate=args.rate or (100.0 if q else 200.0),
        faulty_count=args.faulty_count or (10_000 if q else 50_000),
    )
    report = Report(
        "soak", "bench_soak: issue 5, faults on (503 SlowDown, dropped connections, outages)", args
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "faulty" in args.only:
            for name in ("memory", "file"):
                print(f"running faulty ({name}) ...", file=sys.stderr, flush=True)
                report.add(faulty(s, name))
        if "target" in args.only:
            print("running target ...", file=sys.stderr, flush=True)
            report.add(target(s, tmp))
        if "soak" in args.only:
            print(f"running soak for {s.minutes:g} min ...", file=sys.stderr, flush=True)
            report.add(soak(s, tmp))
    plot(report)
    return report.finish(COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
