"""Issue 6: every transport side by side. memory://, a local directory, and the local servers
for S3 (moto), Azure Blob (Azurite) and GCS (fake-gcs-server).

Scenarios (--only):

  throughput  The log in one process: a ChunkWriter appends N custom messages of about
              B bytes each (JSON) as fast as it can while a SessionReader follows; the
              clock stops when the reader has the writer's ``closed`` (bench_log.py's
              method). msgs/s and payload MB/s (10^6 bytes of payload per second), by
              message size (64 B to 1 MiB, --sizes) at the default 4 MiB chunk, and by chunk
              size (--chunks) at 1 KiB messages. Each run is capped at --max-mb of payload
              and --max-count messages. Requests and bytes written are scaled to 1M messages.
  latency     100 messages/s for S seconds, emit-to-delivery latency p50/p99, with the
              defaults and with the low-latency setting (``--linger 0.02 --poll 0.02``):
              through ``pipes-bus run --events -`` for the shared stores, in process (a
              writer and a reader thread) for memory://.
  idle        One idle writer per store (opened, then silent) under a real Session, from
              the start of the script to its end, in this process: requests and bytes per
              idle minute over the last --idle-window seconds, once backed off.
  fanin       1..64 writer processes (multiprocessing, fork), --per-writer messages each,
              into one session under ``pipes-bus run --events``; exactly once, in order.
              Wall time, msgs/s, peak RSS of the orchestrator (the CLI) and of the largest
              worker process.
  memory      One worker streams --memory-mb of 1,000-byte messages; peak RSS of the
              worker and of the orchestrator.

--quick: small volumes, 1 s trickles, 2-writer fan-in, a 10 s idle window, no memory
scenario (the fan-in rows report peak memory too).
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _checks import Latencies, cdf, verify_events
from _report import (
    MiB,
    Report,
    Row,
    csv,
    figure,
    num,
    parser,
    percentile,
    save_figure,
    thousands,
)
from _stores import STORES, Store, open_store
from bench_e2e import cli_summary, run_cli
from bench_log import run_once

from pipes_bus.log import ChunkWriter, Schedule, SessionReader, WriterSettings
from pipes_bus.messages import Custom, Opened, WriterInfo
from pipes_bus.orchestrator import Event, Session

ALL = ["memory", "file", "s3", "azure", "gcs"]
SHARED = ["file", "s3", "azure", "gcs"]
PLUGINS = {"s3": "pipes_bus_s3", "azure": "pipes_bus_azure", "gcs": "pipes_bus_gcs"}
LOW_LATENCY = ["--linger", "0.02", "--poll", "0.02"]


@dataclass
class Sizes:
    quick: bool
    stores: list[str]
    sizes: list[int]
    chunks_kib: list[int]
    max_mb: float
    max_count: int
    trickle_seconds: float
    idle_window: float
    fanin_writers: list[int]
    per_writer: int
    memory_mb: float


# --- throughput ----------------------------------------------------------------------------


def throughput(s: Sizes, store: Store) -> list[Row]:
    configs = [(size, 4096) for size in s.sizes]
    configs += [(1024, kib) for kib in s.chunks_kib if kib != 4096]
    rows = []
    for size, kib in configs:
        count = max(8, min(s.max_count, int(s.max_mb * 1e6 / size)))
        r = run_once(store, "jsonl", kib * 1024, size, count)
        problems = []
        if r["received"] != count + 1 or r["out_of_order"] or r["faults"]:
            problems.append(
                f"reader got {r['received']} of {count + 1} messages, "
                f"{r['out_of_order']} out of order, {r['faults']} faults"
            )
        rows.append(
            Row(
                "throughput",
                {"store": store.name, "payload_bytes": size, "chunk_kib": kib, "messages": count},
                metrics={
                    **r,
                    "payload_mb_per_s": count * size / r["seconds"] / 1e6,
                    "store_bytes_per_1m": round(r["store_bytes"] * 1e6 / count),
                },
                problems=problems,
            )
        )
    return rows


# --- latency -------------------------------------------------------------------------------


def _in_process_trickle(store: Store, seconds: float, low: bool) -> tuple[Latencies, int]:
    session = f"s-bench-{secrets.token_hex(6)}"
    settings = WriterSettings(linger=0.02) if low else WriterSettings()
    writer = ChunkWriter(store.transport(), session, "w-trickle", settings)
    reader = SessionReader(
        store.transport(), session, schedule=Schedule(0.02, 1.0) if low else None
    )
    got = Latencies()

    def follow() -> None:
        for item in reader.follow():
            if type(item) is Event and type(item.message) is Custom:
                got.add(item.message.payload, time.time())

    thread = threading.Thread(target=follow)
    thread.start()
    count = int(100 * seconds)
    start = time.monotonic()
    for i in range(count):
        delay = start + i / 100 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        writer.write(Custom(time=time.time(), payload={"i": i, "t": time.time()}))
    writer.close()
    thread.join()
    return got, count


def latency(s: Sizes, store: Store, tmp: Path) -> list[Row]:
    rows = []
    for profile, options in (("default", []), ("low-latency", LOW_LATENCY)):
        if store.shared:
            got = Latencies()
            run = run_cli(
                store,
                ["trickle", "--rate", "100", "--seconds", f"{s.trickle_seconds:g}"],
                tmp,
                events="-",
                on_line=got.line_handler(),
                options=options,
            )
            sent = int(100 * s.trickle_seconds)
            problems = run.problems()
            via = "pipes-bus run"
            requests = cli_summary(run).get("orchestrator_requests")
        else:
            got, sent = _in_process_trickle(store, s.trickle_seconds, bool(options))
            problems, via, requests = [], "in process", None
        lost = sent - len(got.seen)
        if lost or got.duplicates:
            problems.append(f"{lost} lost, {got.duplicates} duplicated of {sent}")
        ms = sorted(got.ms)
        rows.append(
            Row(
                "latency",
                {
                    "store": store.name,
                    "setting": profile,
                    "via": via,
                    "rate": 100,
                    "seconds": s.trickle_seconds,
                },
                metrics={
                    "sent": sent,
                    "delivered": len(got.seen),
                    "p50_ms": percentile(ms, 0.5),
                    "p99_ms": percentile(ms, 0.99),
                    "max_ms": ms[-1] if ms else None,
                    "orchestrator_requests": requests,
                },
                problems=problems,
                series={"latency_cdf": cdf(got.ms, sent)},
            )
        )
    return rows


# --- idle ----------------------------------------------------------------------------------


class IdleProbe:
    """A real Session with one opened, silent writer, followed in a thread; samples its cost."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session = Session(store.url, collect=False)
        self.writer = ChunkWriter(store.transport(), self.session.id, "w-idle")
        self.writer.write(Opened(time=time.time(), info=WriterInfo(id="w-idle")))
        self.writer.flush()
        self.samples: list[tuple[float, int, int, dict[str, int]]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.sampler.start()

    def _run(self) -> None:
        for _ in self.session.follow(done=self.stop.is_set, grace=0.0):
            pass

    def _sample(self) -> None:
        stats = self.session.transport.stats
        while not self.stop.is_set():
            snap = stats.snapshot()
            self.samples.append(
                (
                    time.monotonic() - self.t0,
                    stats.total,
                    snap["bytes_received"] + snap["bytes_sent"],
                    snap["requests"],
                )
            )
            self.stop.wait(1.0)

    def finish(self, window: float) -> Row:
        end = self.samples[-1] if self.samples else (0.0, 0, 0, {})
        start = end
        for sample in self.samples:
            if sample[0] >= end[0] - window:
                start = sample
                break
        self.stop.set()
        self.thread.join(timeout=30)
        self.sampler.join(timeout=5)
        with contextlib.suppress(Exception):
            self.writer.close()
        self.session.close()
        seconds = max(end[0] - start[0], 1e-9)
        by_kind = {
            k: round((end[3].get(k, 0) - start[3].get(k, 0)) * 60 / seconds, 1) for k in end[3]
        }
        return Row(
            "idle",
            {
                "store": self.store.name,
                "writers": 1,
                "window_s": round(seconds),
                "after_s": round(start[0]),
            },
            metrics={
                "requests_per_minute": (end[1] - start[1]) * 60 / seconds,
                "bytes_per_minute": (end[2] - start[2]) * 60 / seconds,
                "requests_per_minute_by_kind": {k: v for k, v in by_kind.items() if v},
            },
        )


# --- fan-in and memory ---------------------------------------------------------------------


def fanin(s: Sizes, store: Store, tmp: Path) -> list[Row]:
    rows = []
    preload = ["--preload", PLUGINS[store.name]] if store.name in PLUGINS else []
    for writers in s.fanin_writers:
        events = tmp / "events.jsonl"
        events.unlink(missing_ok=True)
        run = run_cli(
            store,
            ["fanin", "--procs", str(writers), "--count", str(s.per_writer), *preload],
            tmp,
            events=str(events),
        )
        counts, problems = verify_events(events, writers, s.per_writer)
        events.unlink(missing_ok=True)
        total = writers * s.per_writer
        rows.append(
            Row(
                "fanin",
                {"store": store.name, "writers": writers, "per_writer": s.per_writer},
                metrics={
                    "wall_s": run.wall_s,
                    "msgs_per_s": total / run.wall_s,
                    **counts,
                    **cli_summary(run),
                    "orchestrator_peak_mib": run.orchestrator_peak_mib,
                    "worker_peak_mib": run.worker_peak_sampled_mib,
                },
                problems=run.problems() + problems,
            )
        )
    return rows


def memory(s: Sizes, store: Store, tmp: Path) -> Row:
    size = 1000
    count = int(s.memory_mb * 1e6 / size)
    run = run_cli(store, ["stream", "--count", str(count), "--size", str(size)], tmp)
    summary = cli_summary(run)
    problems = run.problems()
    if summary.get("cli_custom") != count:
        problems.append(
            f"the CLI reported {summary.get('cli_custom')} custom messages, expected {count:,}"
        )
    worker = run.worker.get("peak_rss_mib")
    return Row(
        "memory",
        {"store": store.name, "messages": count, "size": size},
        metrics={
            "wall_s": run.wall_s,
            "payload_mb": count * size / 1e6,
            "mb_per_s": count * size / 1e6 / run.wall_s,
            "worker_peak_mib": worker,
            "worker_peak_mb": worker * MiB / 1e6 if worker else None,
            "orchestrator_peak_mib": run.orchestrator_peak_mib,
            **summary,
        },
        problems=problems,
    )


# --- plots and table -----------------------------------------------------------------------


def plot(report: Report) -> None:
    rows = [r for r in report.rows if r.scenario == "throughput"]
    stores = list(dict.fromkeys(r.params["store"] for r in rows))
    by_size = [r for r in rows if r.params["chunk_kib"] == 4096]
    if by_size:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for store in stores:
            mine = sorted(
                (r for r in by_size if r.params["store"] == store),
                key=lambda r: r.params["payload_bytes"],
            )
            xs = [r.params["payload_bytes"] for r in mine]
            ax.plot(xs, [r.metrics["msgs_per_s"] for r in mine], marker="o", label=store)
            ax2.plot(xs, [r.metrics["payload_mb_per_s"] for r in mine], marker="o", label=store)
        sizes = sorted({r.params["payload_bytes"] for r in by_size})
        names = [
            f"{v >> 20} MiB" if v >= 1 << 20 else f"{v >> 10} KiB" if v >= 1024 else f"{v} B"
            for v in sizes
        ]
        for a, label in ((ax, "messages per second"), (ax2, "payload MB/s")):
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_xticks(sizes)
            a.set_xticklabels(names)
            a.minorticks_off()
            a.set_xlabel("payload bytes per message")
            a.set_ylabel(label)
            a.grid(True, alpha=0.3)
        ax.set_title("msgs/s by message size (4 MiB chunks)")
        ax2.set_title("MB/s by message size")
        ax.legend()
        save_figure(fig, report.path("throughput_by_size.png"))
    by_chunk = [r for r in rows if r.params["payload_bytes"] == 1024]
    if by_chunk:
        fig, ax = figure(
            "Throughput by chunk size (1 KiB messages)", "chunk size (KiB)", "messages per second"
        )
        for store in stores:
            mine = sorted(
                (r for r in by_chunk if r.params["store"] == store),
                key=lambda r: r.params["chunk_kib"],
            )
            ax.plot(
                [r.params["chunk_kib"] for r in mine],
                [r.metrics["msgs_per_s"] for r in mine],
                marker="o",
                label=store,
            )
        ax.set_xscale("log", base=2)
        thousands(ax.yaxis)
        ax.legend()
        save_figure(fig, report.path("throughput_by_chunk.png"))
    lat = [r for r in report.rows if r.scenario == "latency"]
    if lat:
        fig, ax = figure(
            "Latency at 100 msg/s: p50 (bar) and p99 (tick)",
            "",
            "milliseconds (log scale)",
            size=(9, 4.5),
        )
        labels = [f"{r.params['store']}\n{r.params['setting']}" for r in lat]
        ax.bar(
            range(len(lat)),
            [r.metrics["p50_ms"] for r in lat],
            color=["tab:blue" if r.params["setting"] == "default" else "tab:orange" for r in lat],
        )
        ax.scatter(
            range(len(lat)),
            [r.metrics["p99_ms"] for r in lat],
            marker="_",
            s=300,
            color="black",
            label="p99",
        )
        ax.set_xticks(range(len(lat)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_yscale("log")
        ax.legend()
        save_figure(fig, report.path("latency.png"))
    fans = [r for r in report.rows if r.scenario == "fanin"]
    if fans:
        fig, ax = figure(
            "Fan-in: writer processes into one session",
            "writer processes",
            "messages per second (whole command)",
        )
        for store in dict.fromkeys(r.params["store"] for r in fans):
            mine = [r for r in fans if r.params["store"] == store]
            ax.plot(
                [r.params["writers"] for r in mine],
                [r.metrics["msgs_per_s"] for r in mine],
                marker="o",
                label=f"{store}, {mine[0].params['per_writer']:,} per writer",
            )
        ax.set_xscale("log", base=2)
        thousands(ax.yaxis)
        ax.legend()
        save_figure(fig, report.path("fanin.png"))


def _size(row: Row) -> str:
    p = row.params
    if row.scenario == "throughput":
        return f"{p['messages']:,} x {p['payload_bytes']:,} B, {p['chunk_kib']:,} KiB chunks"
    if row.scenario == "latency":
        return f"100/s x {p['seconds']:g} s, {p['setting']} ({p['via']})"
    if row.scenario == "idle":
        return f"1 writer, last {p['window_s']} s (from {p['after_s']} s)"
    if row.scenario == "fanin":
        return f"{p['writers']} x {p['per_writer']:,}"
    return f"{p['messages']:,} x {p['size']:,} B"


def _result(row: Row) -> str:
    m = row.metrics
    if row.scenario == "throughput":
        req = " ".join(f"{k}={v:,}" for k, v in m["requests_per_1m"].items())
        return (
            f"{num(m['msgs_per_s'])} msgs/s, {m['payload_mb_per_s']:,.1f} MB/s; per 1M "
            f"msgs: {req}, {m['store_bytes_per_1m'] / 1e6:,.0f} MB written"
        )
    if row.scenario == "latency":
        return (
            f"p50 {num(m['p50_ms'], 1)} p99 {num(m['p99_ms'], 1)} ms; "
            f"{m['delivered']:,}/{m['sent']:,} delivered"
        )
    if row.scenario == "idle":
        kinds = " ".join(f"{k}={v:g}" for k, v in m["requests_per_minute_by_kind"].items())
        return (
            f"{m['requests_per_minute']:.1f} requests/min ({kinds}), "
            f"{m['bytes_per_minute'] / 1e3:,.1f} kB/min"
        )
    if row.scenario == "fanin":
        return (
            f"{m['wall_s']:.2f} s, {num(m['msgs_per_s'])} msgs/s; {m['delivered']:,} "
            f"delivered, {m['errors']} errors; peak MiB orch. "
            f"{m['orchestrator_peak_mib']:.0f}, worker {m['worker_peak_mib']:.0f}"
        )
    return (
        f"{m['payload_mb']:,.0f} MB at {m['mb_per_s']:,.1f} MB/s; peak MiB worker "
        f"{num(m['worker_peak_mib'], 1)}, orch. {m['orchestrator_peak_mib']:.1f}"
    )


COLUMNS = [
    ("scenario", lambda r: r.scenario),
    ("store", lambda r: r.params["store"]),
    ("size", _size),
    ("result", _result),
]


def main() -> int:
    p = parser(__doc__ or "")
    scenarios = ["throughput", "latency", "idle", "fanin", "memory"]
    p.add_argument(
        "--only",
        type=csv(str),
        default=scenarios,
        help=f"scenarios, comma-separated (default: {','.join(scenarios)})",
    )
    p.add_argument(
        "--stores",
        type=csv(str),
        default=ALL,
        help=f"from: {', '.join(STORES)} (default: {','.join(ALL)})",
    )
    p.add_argument(
        "--sizes",
        type=csv(int),
        help="payload bytes (default 64,1024,16384,1048576; quick 64,1048576)",
    )
    p.add_argument(
        "--chunks",
        type=csv(int),
        help="chunk KiB at 1 KiB messages (default 256,1024,4096,16384; quick 256)",
    )
    p.add_argument("--max-mb", type=float, help="payload cap per run (default 32; quick 2)")
    p.add_argument(
        "--max-count", type=int, help="message cap per run (default 200,000; quick 10,000)"
    )
    p.add_argument("--trickle-seconds", type=float, help="default 6; quick 1")
    p.add_argument("--idle-window", type=float, help="seconds (default 60; quick 10)")
    p.add_argument("--writers", type=csv(int), help="fan-in sizes (default 1,8,64; quick 2)")
    p.add_argument("--per-writer", type=int, help="default 2,000; quick 200")
    p.add_argument("--memory-mb", type=float, help="default 100; quick 5")
    args = p.parse_args()
    q = args.quick
    if q and args.only == scenarios:
        args.only = [x for x in scenarios if x != "memory"]  # fan-in reports peaks too
    s = Sizes(
        quick=q,
        stores=args.stores,
        sizes=args.sizes or ([64, 1048576] if q else [64, 1024, 16384, 1048576]),
        chunks_kib=args.chunks or ([256] if q else [256, 1024, 4096, 16384]),
        max_mb=args.max_mb or (2 if q else 32),
        max_count=args.max_count or (10_000 if q else 200_000),
        trickle_seconds=args.trickle_seconds or (1.0 if q else 6.0),
        idle_window=args.idle_window or (10.0 if q else 60.0),
        fanin_writers=args.writers or ([2] if q else [1, 8, 64]),
        per_writer=args.per_writer or (200 if q else 2000),
        memory_mb=args.memory_mb or (5 if q else 100),
    )
    report = Report(
        "stores",
        "bench_stores: every transport (memory, file, S3/moto, Azure/Azurite, GCS/fake-gcs-server)",
        args,
    )
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        probes = []
        if "idle" in args.only:
            for name in s.stores:
                store = stack.enter_context(open_store(name))
                probes.append(IdleProbe(store))
        for name in s.stores:
            with open_store(name) as store:
                if "throughput" in args.only:
                    print(f"running throughput on {name} ...", file=sys.stderr, flush=True)
                    for row in throughput(s, store):
                        report.add(row)
                if "latency" in args.only:
                    print(f"running latency on {name} ...", file=sys.stderr, flush=True)
                    for row in latency(s, store, tmp):
                        report.add(row)
                if store.shared and "fanin" in args.only:
                    print(f"running fanin on {name} ...", file=sys.stderr, flush=True)
                    for row in fanin(s, store, tmp):
                        report.add(row)
                if store.shared and "memory" in args.only:
                    print(f"running memory on {name} ...", file=sys.stderr, flush=True)
                    report.add(memory(s, store, tmp))
        if probes:
            # However long the rest took, measure a full window after backing off.
            wait = s.idle_window + (5 if q else 20) - (time.monotonic() - probes[0].t0)
            if wait > 0:
                print(f"waiting {wait:.0f} s for the idle window ...", file=sys.stderr, flush=True)
                time.sleep(wait)
            for probe in probes:
                report.add(probe.finish(s.idle_window))
    plot(report)
    return report.finish(COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
