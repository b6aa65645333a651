"""End to end: a worker process under the real ``pipes-bus run`` CLI, over a fresh local bus.

Every scenario launches ``pipes-bus run --bus DIR ... -- python workload.py ...`` (see
workload.py) and times the whole command, as a user would see it. Scenarios (--only):

  burst    One worker sends N small custom messages ({"i": i}) as fast as it can, with
           ``--events FILE``. Measures the wall time of the whole command (median of
           --repeat runs; every run's time is shown in brackets), then checks each run's
           events file: exactly N+2 lines (opened, N custom, closed) and every seq
           0..N+1 and every payload i exactly once.
           Target (issue 3): 1,000,000 messages in <= 3 s.
  trickle  One worker sends R messages/s for S seconds, each payload carrying time.time()
           at emit. The consumer records when each message reaches it: via "cli", reading
           ``pipes-bus run --events -`` line by line from a pipe; via "api", the Python API
           (run_subprocess with an on_event callback). Reports emit-to-event latency
           p50/p90/p99/max. Target (issue 3): median <= 50 ms with default settings.
  fanin    One worker program starts P processes (multiprocessing, fork), each its own
           writer labelled "rank r" sending N messages. Checks the events file: P writers,
           each with exactly N custom messages, every seq and payload once, closed cleanly.
           Reports wall time (median of --repeat) and msgs/s for each P in --writers.
           Target (issue 3): 64 x 5,000 with nothing lost and nothing duplicated.
  memory   One worker streams --memory-mb of payload in messages of each --memory-sizes
           (1,000 B x 1M = 1 GB; and 256 KiB x 3,814), without --events. Reports the
           worker's peak RSS (its own getrusage at the end) and the orchestrator's (the CLI
           process, sampled from /proc VmHWM every 50 ms); checks the CLI's summary counts.
           Target (issue 3): worker peak RSS <= 150 MB (10^6 bytes; = 143 MiB).
           Then "replay": ``pipes-bus tail --events /dev/null`` reads the same finished
           session again, as an orchestrator that starts late or restarts would; reports
           its wall time and peak RSS (no stated target).

The ``errors`` metric counts, per writer, every seq and every payload index that is missing,
duplicated or out of range (so one lost message counts twice), plus stream faults and the
messages of writers that never appeared: 0 means the events are exactly as sent.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _checks import Latencies, line_blocks
from _processes import ProcessWatch, pipes_bus_cli, workload
from _report import (
    MiB,
    Report,
    Row,
    Target,
    csv,
    figure,
    num,
    parser,
    percentile,
    save_figure,
    thousands,
)
from _stores import STORES, Store, open_store

from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Event

NO_ERRORS = Target("errors", "<=", 0, source="issue 3")
# Session options for the API path of the trickle; later issues add e.g. "low-latency".
PROFILES: dict[str, dict[str, Any]] = {"default": {}}


# --- running the CLI -------------------------------------------------------------------------


@dataclass
class CliRun:
    """One ``pipes-bus`` command: its exit, its wall time, and the memory of its processes."""

    exit_code: int
    wall_s: float
    stderr: str
    orchestrator_peak_mib: float
    worker_peak_sampled_mib: float
    worker: dict[str, Any]  # the workload's own --report
    rss: list[tuple[float, float, float]] = field(default_factory=list)

    def problems(self) -> list[str]:
        if self.exit_code == 0:
            return []
        last = self.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return [f"the pipes-bus command exited {self.exit_code}: {last[0]}"]


def run_command(
    argv: list[str],
    tmp: Path,
    env: Mapping[str, str],
    *,
    on_line: Callable[[bytes, float], None] | None = None,
    report: Path | None = None,
    watch_interval: float = 0.05,
) -> CliRun:
    """Run ``argv``, watching its memory; ``on_line`` gets each stdout line as it arrives."""
    with open(tmp / "stderr.txt", "w+b") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE if on_line else subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **env},
        )
        watch = ProcessWatch(proc.pid, interval=watch_interval).start()
        if on_line is not None:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line, time.time())
        code = proc.wait()
        wall = time.perf_counter() - started
        watch.stop()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    worker = msgspec.json.decode(report.read_bytes()) if report and report.exists() else {}
    return CliRun(
        code, wall, stderr, watch.root_peak_mib, watch.descendant_peak_mib, worker, watch.samples
    )


def run_cli(
    store: Store,
    workload_args: list[str],
    tmp: Path,
    *,
    events: str | None = None,
    session: str | None = None,
    on_line: Callable[[bytes, float], None] | None = None,
    options: Sequence[str] = (),
    watch_interval: float = 0.05,
) -> CliRun:
    """``pipes-bus run [--events EVENTS] [OPTIONS] -- python workload.py WORKLOAD_ARGS``."""
    report = tmp / "worker-report.json"
    report.unlink(missing_ok=True)  # never read an earlier run's report
    argv = [
        *pipes_bus_cli(),
        "run",
        "--bus",
        store.url,
        *store.storage_args(),
        *options,
        *(["--events", events] if events else []),
        *(["--session-id", session] if session else []),
        "--",
        *workload("--report", str(report), *workload_args),
    ]
    return run_command(
        argv, tmp, store.env, on_line=on_line, report=report, watch_interval=watch_interval
    )


def replay_cli(store: Store, session: str, tmp: Path) -> CliRun:
    """``pipes-bus tail --events /dev/null`` on a finished session: reading it after the fact."""
    argv = [
        *pipes_bus_cli(),
        "tail",
        f"{store.url.rstrip('/')}/{session}",
        "--events",
        os.devnull,
        *store.storage_args(),
    ]
    return run_command(argv, tmp, store.env)


# --- checking an events file -----------------------------------------------------------------


class _Line(msgspec.Struct):
    kind: str
    writer: str | None = None
    seq: int | None = None
    payload: Any = None
    exception: Any = None


class _Tally:
    __slots__ = ("closed_ok", "customs", "opened", "payloads", "rank", "seqs", "unexpected")

    def __init__(self, per_writer: int) -> None:
        self.seqs = bytearray(per_writer + 2)  # times each seq was seen (saturating)
        self.payloads = bytearray(per_writer)  # times each payload i was seen
        self.customs = 0
        self.unexpected = 0
        self.opened = False
        self.closed_ok = False
        self.rank: int | None = None


def _count(counts: bytearray, index: Any) -> bool:
    if not isinstance(index, int) or not 0 <= index < len(counts):
        return False
    if counts[index] < 255:
        counts[index] += 1
    return True


def check_events(path: Path, writers: int, per_writer: int) -> tuple[dict[str, int], list[str]]:
    """Check an ``--events`` file: ``writers`` streams, each opened + ``per_writer`` + closed.

    Returns counts (lines, writers, errors) and one sentence per kind of problem.
    """
    decoder = msgspec.json.Decoder(_Line)
    streams: dict[str, _Tally] = {}
    lines = faults = 0
    for block in line_blocks(path):
        for e in decoder.decode_lines(block):
            lines += 1
            if e.kind == "fault" or e.writer is None or e.seq is None:
                faults += 1
                continue
            tally = streams.get(e.writer)
            if tally is None:
                tally = streams[e.writer] = _Tally(per_writer)
            if not _count(tally.seqs, e.seq):
                tally.unexpected += 1
            if e.kind == "custom":
                tally.customs += 1
                payload = e.payload if isinstance(e.payload, dict) else {}
                if not _count(tally.payloads, payload.get("i")):
                    tally.unexpected += 1
                if tally.rank is None:
                    tally.rank = payload.get("r")
            elif e.kind == "opened":
                tally.opened = e.seq == 0
            elif e.kind == "closed":
                tally.closed_ok = e.seq == per_writer + 1 and e.exception is None
    missing = sum(t.seqs.count(0) + t.payloads.count(0) for t in streams.values())
    duplicated = sum(sum(c - 1 for c in t.seqs + t.payloads if c > 1) for t in streams.values())
    unexpected = sum(t.unexpected for t in streams.values())
    absent = max(0, writers - len(streams)) * (per_writer + 2)
    problems = []
    if lines != writers * (per_writer + 2):
        problems.append(f"{lines:,} event lines, expected {writers * (per_writer + 2):,}")
    if len(streams) != writers:
        problems.append(f"{len(streams)} writers, expected {writers}")
    if missing or duplicated or unexpected:
        problems.append(
            f"{missing:,} seqs/payloads missing, {duplicated:,} duplicated, "
            f"{unexpected:,} unexpected"
        )
    wrong = [w for w, t in streams.items() if t.customs != per_writer]
    if wrong:
        problems.append(f"{len(wrong)} writers without exactly {per_writer:,} custom messages")
    unclosed = [w for w, t in streams.items() if not (t.opened and t.closed_ok)]
    if unclosed:
        problems.append(f"{len(unclosed)} writers not opened at seq 0 and closed cleanly last")
    ranks = [t.rank for t in streams.values()]
    if writers > 1 and sorted(r for r in ranks if isinstance(r, int)) != list(range(writers)):
        problems.append("the writers' ranks are not exactly 0..P-1, once each")
    if faults:
        problems.append(f"{faults} stream faults")
    errors = missing + duplicated + unexpected + absent + faults
    return {"lines": lines, "writers": len(streams), "errors": errors}, problems


# --- scenarios -------------------------------------------------------------------------------


@dataclass
class Settings:
    """The sizes of every scenario (full or --quick) and the stores to run on."""

    quick: bool
    stores: list[str]
    repeat: int
    burst: int
    trickle_rate: float
    trickle_seconds: float
    trickle_via: list[str]
    profiles: list[str]
    fanin_writers: list[int]
    fanin_count: int
    memory_mb: float
    memory_sizes: list[int]
    replay: bool


def repeated(
    s: Settings, store: Store, tmp: Path, args: list[str], writers: int, per_writer: int
) -> tuple[CliRun, dict[str, Any], list[str]]:
    """Run a workload --repeat times with --events, checking every run's events file.

    Returns the run with the median wall time, metrics (that run's counts, every run's
    wall time, errors summed over all runs) and every run's problems.
    """
    runs: list[tuple[CliRun, dict[str, int]]] = []
    problems: list[str] = []
    for k in range(s.repeat):
        events = tmp / "events.jsonl"
        run = run_cli(store, args, tmp, events=str(events))
        counts, found = check_events(events, writers, per_writer)
        events.unlink(missing_ok=True)
        problems += [f"run {k + 1}: {p}" for p in run.problems() + found]
        runs.append((run, counts))
    errors = sum(c["errors"] for _, c in runs)
    walls = [round(r.wall_s, 3) for r, _ in runs]
    runs.sort(key=lambda rc: rc[0].wall_s)
    run, counts = runs[len(runs) // 2]
    return run, {**counts, "errors": errors, "wall_s_all": walls}, problems


def burst(s: Settings, store: Store, tmp: Path) -> list[Row]:
    run, counts, problems = repeated(s, store, tmp, ["burst", "--count", str(s.burst)], 1, s.burst)
    return [
        Row(
            "burst",
            {"store": store.name, "messages": s.burst, "repeat": s.repeat},
            metrics={
                "wall_s": run.wall_s,
                "msgs_per_s": s.burst / run.wall_s,
                **counts,
                **cli_summary(run),
                "orchestrator_peak_mib": run.orchestrator_peak_mib,
                "worker_peak_mib": run.worker.get("peak_rss_mib"),
                "worker_emit_s": run.worker.get("seconds"),
            },
            problems=problems,
            targets=[Target("wall_s", "<=", 3.0, source="issue 3", full_only=True), NO_ERRORS],
        )
    ]


def trickle(s: Settings, store: Store, tmp: Path) -> list[Row]:
    sent = int(s.trickle_rate * s.trickle_seconds)
    args = ["trickle", "--rate", str(s.trickle_rate), "--seconds", str(s.trickle_seconds)]
    runs: list[tuple[str, str, Latencies, list[str], int | None]] = []
    if "cli" in s.trickle_via:
        got = Latencies()
        decoder = msgspec.json.Decoder(_Line)

        def on_line(line: bytes, received: float) -> None:
            event = decoder.decode(line)
            if event.kind == "custom":
                got.add(event.payload, received)

        run = run_cli(store, args, tmp, events="-", on_line=on_line)
        requests = cli_summary(run).get("orchestrator_requests")
        runs.append(("cli", "default", got, run.problems(), requests))
    if "api" in s.trickle_via:
        from pipes_bus.orchestrator import run_subprocess

        for profile in s.profiles:
            got = Latencies()

            def on_event(item: Any, got: Latencies = got) -> None:
                received = time.time()
                if type(item) is Event and type(item.message) is Custom:
                    got.add(item.message.payload, received)

            result = run_subprocess(
                workload(*args),
                bus=store.url,
                env=store.env,
                storage_options=dict(store.storage_options),
                on_event=on_event,
                **PROFILES[profile],
            )
            reason = result.reason()
            requests = sum(result.requests.get("requests", {}).values())
            runs.append(("api", profile, got, [f"session: {reason}"] if reason else [], requests))
    rows = []
    for via, profile, got, problems, requests in runs:
        ms = sorted(got.ms)
        lost = sent - len(got.seen)
        if lost or got.duplicates:
            problems = [*problems, f"{lost} lost, {got.duplicates} duplicated of {sent}"]
        rows.append(
            Row(
                "trickle",
                {
                    "store": store.name,
                    "via": via,
                    "profile": profile,
                    "rate": s.trickle_rate,
                    "seconds": s.trickle_seconds,
                },
                metrics={
                    "sent": sent,
                    "received": len(ms),
                    "errors": lost + got.duplicates,
                    **{f"p{q}_ms": percentile(ms, q / 100) for q in (50, 90, 99)},
                    "max_ms": ms[-1] if ms else None,
                    "mean_ms": sum(ms) / len(ms) if ms else None,
                    "orchestrator_requests": requests,
                },
                problems=problems,
                targets=[Target("p50_ms", "<=", 50, source="issue 3"), NO_ERRORS],
                series={"latency_ms": [round(v, 2) for v in got.ms]},
            )
        )
    return rows


def fanin(s: Settings, store: Store, tmp: Path) -> list[Row]:
    rows = []
    for writers in s.fanin_writers:
        args = ["fanin", "--procs", str(writers), "--count", str(s.fanin_count)]
        run, counts, problems = repeated(s, store, tmp, args, writers, s.fanin_count)
        rows.append(
            Row(
                "fanin",
                {
                    "store": store.name,
                    "writers": writers,
                    "per_writer": s.fanin_count,
                    "repeat": s.repeat,
                },
                metrics={
                    "wall_s": run.wall_s,
                    "msgs_per_s": writers * s.fanin_count / run.wall_s,
                    **counts,
                    **cli_summary(run),
                    "orchestrator_peak_mib": run.orchestrator_peak_mib,
                    "worker_peak_mib": run.worker_peak_sampled_mib,
                },
                problems=problems,
                targets=[NO_ERRORS],
            )
        )
    return rows


_SUMMARY = re.compile(r"(\d+) messages \((\d+) custom.*?(\d+) store requests")


def cli_summary(run: CliRun) -> dict[str, int]:
    """Counts from the CLI's closing summary line: messages, custom, the reader's requests."""
    found = _SUMMARY.search(run.stderr)
    if not found:
        return {}
    messages, custom, requests = (int(g) for g in found.groups())
    return {"cli_messages": messages, "cli_custom": custom, "orchestrator_requests": requests}


def _summary_problems(run: CliRun, expected: int) -> list[str]:
    """The run's exit problems, and a check of the custom count in the CLI's summary line."""
    customs = cli_summary(run).get("cli_custom")
    if customs == expected:
        return run.problems()
    return [*run.problems(), f"the CLI reported {customs} custom messages, expected {expected:,}"]


def memory(s: Settings, store: Store, tmp: Path) -> list[Row]:
    rows = []
    for size in s.memory_sizes:
        count = max(1, int(s.memory_mb * 1e6 / size))
        session = f"s-bench-memory-{size}"
        run = run_cli(
            store, ["stream", "--count", str(count), "--size", str(size)], tmp, session=session
        )
        volume_mb = count * size / 1e6
        worker_mib = run.worker.get("peak_rss_mib")
        step = max(1, len(run.rss) // 400)
        params = {"store": store.name, "messages": count, "size": size}
        rows.append(
            Row(
                "memory",
                params,
                metrics={
                    "wall_s": run.wall_s,
                    "msgs_per_s": count / run.wall_s,
                    "payload_mb": volume_mb,
                    "mb_per_s": volume_mb / run.wall_s,
                    "worker_peak_mib": worker_mib,
                    "worker_peak_mb": worker_mib * MiB / 1e6 if worker_mib else None,
                    "worker_peak_sampled_mib": run.worker_peak_sampled_mib,
                    "orchestrator_peak_mib": run.orchestrator_peak_mib,
                    **cli_summary(run),
                },
                problems=_summary_problems(run, count),
                targets=[Target("worker_peak_mb", "<=", 150, source="issue 3", full_only=True)],
                series={"rss_mib": [[round(v, 2) for v in sample] for sample in run.rss[::step]]},
            )
        )
        if s.replay:
            replay = replay_cli(store, session, tmp)
            rows.append(
                Row(
                    "replay",
                    params,
                    metrics={
                        "wall_s": replay.wall_s,
                        "msgs_per_s": count / replay.wall_s,
                        "payload_mb": volume_mb,
                        "mb_per_s": volume_mb / replay.wall_s,
                        "orchestrator_peak_mib": replay.orchestrator_peak_mib,
                        **cli_summary(replay),
                    },
                    problems=_summary_problems(replay, count),
                )
            )
    return rows


SCENARIOS: dict[str, Callable[[Settings, Store, Path], list[Row]]] = {
    "burst": burst,
    "trickle": trickle,
    "fanin": fanin,
    "memory": memory,
}


# --- plots and table -------------------------------------------------------------------------


def plot(report: Report) -> None:
    trickles = [r for r in report.rows if r.scenario == "trickle"]
    if trickles:
        fig, ax = figure("Trickle: emit-to-event latency (CDF)", "latency (ms)", "fraction")
        for row in trickles:
            ms = sorted(row.series["latency_ms"])
            if ms:
                p = row.params
                ax.plot(
                    ms,
                    [(i + 1) / len(ms) for i in range(len(ms))],
                    label=f"{p['store']} via {p['via']} ({p['profile']}), "
                    f"p50 {row.metrics['p50_ms']:.1f} ms",
                )
        ax.axvline(50, color="red", linestyle="--", label="target: median <= 50 ms")
        ax.legend()
        save_figure(fig, report.path("trickle_latency.png"))
    fans = [r for r in report.rows if r.scenario == "fanin"]
    if fans:
        fig, ax = figure("Fan-in: writers into one session", "writer processes", "messages per s")
        for store in dict.fromkeys(r.params["store"] for r in fans):
            mine = [r for r in fans if r.params["store"] == store]
            ax.plot(
                [r.params["writers"] for r in mine],
                [r.metrics["msgs_per_s"] for r in mine],
                marker="o",
                label=f"{store}, {mine[0].params['per_writer']:,} msgs per writer",
            )
        ax.set_xscale("log", base=2)
        thousands(ax.yaxis)
        ax.legend()
        save_figure(fig, report.path("fanin.png"))
    for row in (r for r in report.rows if r.scenario == "memory"):
        p = row.params
        fig, ax = figure(
            f"Memory: streaming {row.metrics['payload_mb']:,.0f} MB in "
            f"{p['size']:,} B messages ({p['store']})",
            "seconds",
            "RSS (MiB)",
        )
        samples = row.series["rss_mib"]
        ax.plot([t for t, _, _ in samples], [w for _, _, w in samples], label="worker")
        ax.plot([t for t, _, _ in samples], [o for _, o, _ in samples], label="orchestrator (CLI)")
        ax.axhline(150, color="red", linestyle="--", label="worker target 150 MB")
        ax.legend()
        save_figure(fig, report.path(f"memory_{p['store']}_{p['size']}.png"))


def _size(row: Row) -> str:
    p = row.params
    if row.scenario == "trickle":
        return f"{p['rate']:g}/s x {p['seconds']:g} s via {p['via']} ({p['profile']})"
    if row.scenario == "fanin":
        return f"{p['writers']} x {p['per_writer']:,}"
    if row.scenario in ("memory", "replay"):
        return f"{p['messages']:,} x {p['size']:,} B"
    return f"{p['messages']:,}"


def _detail(row: Row) -> str:
    m = row.metrics
    if row.scenario == "trickle":
        return (
            f"p50 {m['p50_ms']:.1f} p90 {m['p90_ms']:.1f} p99 {m['p99_ms']:.1f} "
            f"max {num(m['max_ms'], 1)} ms; {m['received']}/{m['sent']} received"
        )
    if row.scenario == "memory":
        return (
            f"{m['payload_mb']:,.0f} MB at {m['mb_per_s']:,.0f} MB/s; worker peak "
            f"{num(m['worker_peak_mib'], 1)} MiB (sampled {m['worker_peak_sampled_mib']:.1f})"
        )
    if row.scenario == "replay":
        return f"{m['payload_mb']:,.0f} MB re-read at {m['mb_per_s']:,.0f} MB/s by pipes-bus tail"
    return f"{m['lines']:,} lines, {m['writers']} writers, {m['errors']} errors"


def _wall(row: Row) -> str:
    walls = row.metrics.get("wall_s_all", [])
    more = f" ({'/'.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else ""
    return num(row.metrics.get("wall_s"), 2) + more


COLUMNS = [
    ("scenario", lambda r: r.scenario),
    ("store", lambda r: r.params["store"]),
    ("size", _size),
    ("wall s", _wall),
    ("msgs/s", lambda r: num(r.metrics.get("msgs_per_s"))),
    ("result", _detail),
    ("orch. peak MiB", lambda r: num(r.metrics.get("orchestrator_peak_mib"), 1)),
    ("orch. requests", lambda r: num(r.metrics.get("orchestrator_requests"))),
]


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument(
        "--only",
        type=csv(str),
        default=list(SCENARIOS),
        help=f"scenarios to run, comma-separated (default: {','.join(SCENARIOS)})",
    )
    p.add_argument(
        "--stores",
        type=csv(str),
        default=["file"],
        help=f"stores shared between processes, from: {', '.join(STORES)} (default: file)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        help="runs of burst and of each fan-in size; the "
        "table shows the median (default 3; quick 1)",
    )
    p.add_argument("--burst", type=int, help="burst messages (default 1,000,000; quick 20,000)")
    p.add_argument("--trickle-seconds", type=float, help="default 10; quick 3")
    p.add_argument("--trickle-rate", type=float, default=100.0, help="messages/s (default 100)")
    p.add_argument(
        "--trickle-via",
        type=csv(str),
        default=["cli", "api"],
        help="consumers: cli (--events - through a pipe), api (run_subprocess)",
    )
    p.add_argument(
        "--profiles",
        type=csv(str),
        default=list(PROFILES),
        help=f"API trickle session settings, from: {', '.join(PROFILES)}",
    )
    p.add_argument(
        "--writers", type=csv(int), help="fan-in process counts (default 1,4,16,64; quick 1,8)"
    )
    p.add_argument(
        "--per-writer", type=int, help="fan-in messages each (default 5,000; quick 1,000)"
    )
    p.add_argument(
        "--memory-mb", type=float, help="payload volume streamed per size (default 1000; quick 20)"
    )
    p.add_argument(
        "--memory-sizes",
        type=csv(int),
        help="payload bytes per message (default 1000,262144; quick 1000)",
    )
    p.add_argument(
        "--no-replay",
        dest="replay",
        action="store_false",
        help="skip re-reading each memory session with pipes-bus tail",
    )
    args = p.parse_args()
    quick = args.quick
    settings = Settings(
        quick=quick,
        stores=args.stores,
        repeat=args.repeat or (1 if quick else 3),
        burst=args.burst or (20_000 if quick else 1_000_000),
        trickle_rate=args.trickle_rate,
        trickle_seconds=args.trickle_seconds or (3.0 if quick else 10.0),
        trickle_via=args.trickle_via,
        profiles=args.profiles,
        fanin_writers=args.writers or ([1, 8] if quick else [1, 4, 16, 64]),
        fanin_count=args.per_writer or (1_000 if quick else 5_000),
        memory_mb=args.memory_mb or (20 if quick else 1000),
        memory_sizes=args.memory_sizes or ([1000] if quick else [1000, 262144]),
        replay=args.replay,
    )
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    report = Report("e2e", "bench_e2e: end to end through `pipes-bus run`", args)
    for name in args.stores:
        for scenario in args.only:
            with open_store(name) as store, tempfile.TemporaryDirectory() as tmp:
                if not store.shared:
                    p.error(f"store {name} is not shared between processes")
                print(f"running {scenario} on {name} ...", file=sys.stderr, flush=True)
                for row in SCENARIOS[scenario](settings, store, Path(tmp)):
                    report.add(row)
    plot(report)
    return report.finish(COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
