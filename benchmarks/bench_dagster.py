"""Side by side with Dagster Pipes: the message-loss cases of the design notes, file throughput
and latency. Dagster (dagster, dagster-pipes, dagster-aws) is an optional benchmark
dependency: without it this script says so and exits 0.

The reference is wired as Dagster documents it (see _reference.py and
reference_workload.py): an asset calling ``PipesSubprocessClient.run``, the worker using
``open_dagster_pipes()``. pipes_bus runs the same workload (workload.py) under
``pipes-bus run`` with its defaults, on the same store, in the same run. What the
reference loses is a finding about the reference, reported in the table; what pipes_bus
loses is a correctness problem (the script exits 1).

Scenarios (--only):

  file-burst   N custom messages through each system's default local transport: the
               reference's temp-file message reader and the worker's default file writer;
               pipes_bus on a local directory. Messages delivered of those sent, the time
               (reference: PipesSubprocessClient.run; pipes_bus: the whole CLI), and
               whether the run was reported a success. Sizes: 100,000 (the design notes'
               case) and 1,000,000, each --repeat times.
  file-trickle 100 messages/s for S seconds on the same default local transports;
               emit-to-delivery latency p50/p99.
  unencodable  A worker sends N messages, then one payload that JSON cannot encode
               (``object()``), then N more, then closes. Reference on S3 (moto) with
               PipesS3MessageWriter and PipesS3MessageReader at their defaults, and with the
               default file writer; pipes_bus on S3. Did the call raise, how many of the 2N
               good messages and the ``closed`` arrived, and was the run reported a success.

(The S3 cases, the 1M burst and the writer interval=1 trickle, are in bench_s3.py.)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

from _checks import Latencies, cdf, verify_events
from _reference import ReferenceRun, run_reference
from _report import Report, Row, Target, csv, figure, num, parser, percentile, save_figure
from _stores import BUCKET, open_store
from bench_e2e import run_cli

NO_ERRORS = Target("errors", "<=", 0, source="issue 6")


def _reference_row(
    scenario: str, params: dict[str, Any], runs: list[ReferenceRun], sent: int
) -> Row:
    runs = sorted(runs, key=lambda r: r.run_s)
    ref = runs[len(runs) // 2]
    delivered = [len(r.payloads) for r in runs]
    return Row(
        scenario,
        {"system": "dagster-pipes", **params},
        metrics={
            "wall_s": ref.run_s,
            "wall_s_all": [round(r.run_s, 3) for r in runs],
            "sent": sent,
            "delivered": len(ref.payloads),
            "delivered_all": delivered,
            "lost_all": [sent - d for d in delivered],
            "msgs_per_s": len(ref.payloads) / ref.run_s if ref.run_s else None,
            "closed_received": [r.methods.get("closed", 0) > 0 for r in runs],
            "reported_success": [r.success for r in runs],
            "dagster_warnings": ref.problems[:5],
        },
    )


def file_burst(sizes: list[int], repeat: int, tmp: Path) -> list[Row]:
    rows = []
    for n in sizes:
        times = repeat  # the reference's losses come and go from run to run
        refs = [
            run_reference(["burst", "--count", str(n)], reader="default", tmp=tmp)
            for _ in range(times)
        ]
        rows.append(
            _reference_row(
                "file-burst",
                {"store": "local file (defaults)", "messages": n, "repeat": times},
                refs,
                n,
            )
        )
        walls, problems, errors = [], [], 0
        delivered = []
        with open_store("file") as store:
            for k in range(times):
                events = tmp / "events.jsonl"
                events.unlink(missing_ok=True)
                run = run_cli(store, ["burst", "--count", str(n)], tmp, events=str(events))
                counts, found = verify_events(events, 1, n)
                events.unlink(missing_ok=True)
                problems += [f"run {k + 1}: {p}" for p in run.problems() + found]
                errors += counts["errors"]
                walls.append(run.wall_s)
                delivered.append(counts["delivered"])
        wall = sorted(walls)[len(walls) // 2]
        rows.append(
            Row(
                "file-burst",
                {
                    "system": "pipes_bus",
                    "store": "local file (defaults)",
                    "messages": n,
                    "repeat": times,
                },
                metrics={
                    "wall_s": wall,
                    "wall_s_all": [round(w, 3) for w in walls],
                    "sent": n,
                    "delivered": sorted(delivered)[0],
                    "delivered_all": delivered,
                    "msgs_per_s": n / wall,
                    "errors": errors,
                    "reported_success": [not problems],
                },
                problems=problems,
                targets=[NO_ERRORS],
            )
        )
    return rows


def _latency(ms: list[float]) -> dict[str, Any]:
    ms = sorted(ms)
    return {
        "p50_ms": percentile(ms, 0.5),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": ms[-1] if ms else None,
    }


def file_trickle(seconds: float, tmp: Path) -> list[Row]:
    rate = 100.0
    args = ["trickle", "--rate", f"{rate:g}", "--seconds", f"{seconds:g}"]
    ref = run_reference(args, reader="default", tmp=tmp)
    got = Latencies()
    for when, payload in ref.received_at:
        got.add(payload, when)
    sent = int(rate * seconds)
    params = {"store": "local file (defaults)", "rate": rate, "seconds": seconds}
    rows = [
        Row(
            "file-trickle",
            {"system": "dagster-pipes", **params},
            metrics={
                "sent": sent,
                "delivered": len(ref.payloads),
                "reported_success": [ref.success],
                **_latency(got.ms),
            },
            series={"latency_cdf": cdf(got.ms, sent)},
        )
    ]
    ours = Latencies()
    with open_store("file") as store:
        run = run_cli(store, args, tmp, events="-", on_line=ours.line_handler())
    lost = sent - len(ours.seen)
    problems = run.problems() + (
        [f"{lost} lost, {ours.duplicates} duplicated"] if lost or ours.duplicates else []
    )
    rows.append(
        Row(
            "file-trickle",
            {"system": "pipes_bus", **params},
            metrics={
                "sent": sent,
                "delivered": len(ours.seen),
                "errors": lost + ours.duplicates,
                **_latency(ours.ms),
            },
            problems=problems,
            targets=[NO_ERRORS],
            series={"latency_cdf": cdf(ours.ms, sent)},
        )
    )
    return rows


def unencodable(count: int, tmp: Path) -> list[Row]:
    rows = []
    args = ["unencodable", "--count", str(count)]
    for reader, where in (
        ("s3", "s3 (moto), S3 writer/reader defaults"),
        ("default", "local file (defaults)"),
    ):
        if reader == "s3":
            print(
                "  (a TypeError traceback from the reference worker's upload thread follows: "
                "that is the failure being measured)",
                file=sys.stderr,
                flush=True,
            )
            with open_store("s3"):  # starts moto, points boto3 at it
                ref = run_reference(args, reader="s3", tmp=tmp, bucket=BUCKET)
        else:
            ref = run_reference(args, reader="default", tmp=tmp)
        rows.append(
            Row(
                "unencodable",
                {"system": "dagster-pipes", "store": where, "messages": 2 * count},
                metrics={
                    "sent": 2 * count,
                    "delivered": len(ref.payloads),
                    "raised_at_call": ref.worker.get("raised_at_call"),
                    "closed_received": ref.methods.get("closed", 0) > 0,
                    "reported_success": ref.success,
                    "wall_s": ref.run_s,
                    "dagster_warnings": ref.problems[:5],
                },
            )
        )
    with open_store("s3") as store:
        events = tmp / "events.jsonl"
        events.unlink(missing_ok=True)
        run = run_cli(store, args, tmp, events=str(events))
        counts, problems = verify_events(events, 1, 2 * count)
        events.unlink(missing_ok=True)
    rows.append(
        Row(
            "unencodable",
            {"system": "pipes_bus", "store": "s3 (moto), defaults", "messages": 2 * count},
            metrics={
                "sent": 2 * count,
                "delivered": counts["delivered"],
                "errors": counts["errors"],
                "raised_at_call": run.worker.get("raised_at_call"),
                "closed_received": not any("closed" in p for p in problems),
                "reported_success": run.exit_code == 0,
                "wall_s": run.wall_s,
            },
            problems=run.problems() + problems,
            targets=[NO_ERRORS],
        )
    )
    return rows


# --- report --------------------------------------------------------------------------------


def plot(report: Report) -> None:
    rows = [r for r in report.rows if r.scenario == "file-trickle" and r.series.get("latency_cdf")]
    if rows:
        fig, ax = figure(
            "Local file, 100 msg/s: emit-to-delivery latency (CDF)",
            "latency (ms, log scale)",
            "fraction of messages sent",
        )
        for row in rows:
            points = row.series["latency_cdf"]
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                label=f"{row.params['system']}: p50 {num(row.metrics['p50_ms'], 1)} ms",
            )
        ax.set_xscale("log")
        ax.legend()
        save_figure(fig, report.path("file_trickle_latency.png"))
    bursts = [r for r in report.rows if r.scenario == "file-burst"]
    if bursts:
        sizes = list(dict.fromkeys(r.params["messages"] for r in bursts))
        fig, ax = figure(
            "Default local file transport: messages delivered (worst run)",
            "messages sent",
            "share delivered",
            size=(7, 4),
        )
        for k, system in enumerate(("dagster-pipes", "pipes_bus")):
            for i, n in enumerate(sizes):
                for r in bursts:
                    if r.params["system"] == system and r.params["messages"] == n:
                        worst = min(r.metrics["delivered_all"])
                        x = i + (k - 0.5) * 0.38
                        ax.bar(
                            x,
                            worst / n,
                            0.36,
                            color=("tab:orange", "tab:blue")[k],
                            label=system if i == 0 else None,
                        )
                        ax.text(
                            x, worst / n + 0.01, f"{worst:,}", ha="center", va="bottom", fontsize=8
                        )
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([f"{n:,}" for n in sizes])
        ax.set_ylim(0, 1.15)
        ax.legend(loc="upper right")
        save_figure(fig, report.path("file_burst_delivered.png"))


def _size(row: Row) -> str:
    p = row.params
    if "rate" in p:
        return f"{p['rate']:g}/s x {p['seconds']:g} s"
    return f"{p['messages']:,}" + (f" x {p['repeat']} runs" if p.get("repeat", 1) > 1 else "")


def _yes(value: Any) -> str:
    values = value if isinstance(value, list) else [value]
    return "/".join("yes" if v else "no" for v in values)


def _result(row: Row) -> str:
    m = row.metrics
    if row.scenario == "file-trickle":
        return (
            f"p50 {num(m['p50_ms'], 1)} p99 {num(m['p99_ms'], 1)} ms; "
            f"{m['delivered']:,}/{m['sent']:,} delivered"
        )
    if row.scenario == "unencodable":
        raised = "raised at the call" if m["raised_at_call"] else "no error at the call"
        return (
            f"{raised}; {m['delivered']:,}/{m['sent']:,} delivered; closed "
            f"{_yes(m['closed_received'])}; run reported "
            f"{'success' if m['reported_success'] else 'failure'}"
        )
    delivered = m.get("delivered_all", [m["delivered"]])
    walls = m.get("wall_s_all", [m["wall_s"]])
    return (
        f"{'/'.join(f'{d:,}' for d in delivered)} of {m['sent']:,} delivered in "
        f"{'/'.join(f'{w:.2f}' for w in walls)} s; success reported: "
        f"{_yes(m['reported_success'])}"
    )


COLUMNS = [
    ("scenario", lambda r: r.scenario),
    ("system", lambda r: r.params["system"]),
    ("store", lambda r: r.params["store"]),
    ("size", _size),
    ("result", _result),
    ("msgs/s", lambda r: num(r.metrics.get("msgs_per_s"))),
]


def main() -> int:
    p = parser(__doc__ or "")
    scenarios = ["file-burst", "file-trickle", "unencodable"]
    p.add_argument(
        "--only",
        type=csv(str),
        default=scenarios,
        help=f"scenarios, comma-separated (default: {','.join(scenarios)})",
    )
    p.add_argument(
        "--sizes", type=csv(int), help="file-burst sizes (default 100000,1000000; quick 100000)"
    )
    p.add_argument("--repeat", type=int, help="runs of each size (default 3; quick 1)")
    p.add_argument("--trickle-seconds", type=float, help="default 10; quick 3")
    args = p.parse_args()
    missing = [
        m
        for m in ("dagster", "dagster_pipes", "dagster_aws")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"bench_dagster: skipped, {', '.join(missing)} not installed "
            "(pip install -e '.[bench]')",
            file=sys.stderr,
        )
        return 0
    q = args.quick
    report = Report(
        "dagster", "bench_dagster: side by side with Dagster Pipes (loss cases, local file)", args
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "file-burst" in args.only:
            print("running file-burst ...", file=sys.stderr, flush=True)
            sizes = args.sizes or ([100_000] if q else [100_000, 1_000_000])
            for row in file_burst(sizes, args.repeat or (1 if q else 3), tmp):
                report.add(row)
        if "file-trickle" in args.only:
            print("running file-trickle ...", file=sys.stderr, flush=True)
            for row in file_trickle(args.trickle_seconds or (3.0 if q else 10.0), tmp):
                report.add(row)
        if "unencodable" in args.only:
            print("running unencodable ...", file=sys.stderr, flush=True)
            for row in unencodable(100, tmp):
                report.add(row)
    plot(report)
    return report.finish(COLUMNS)


if __name__ == "__main__":
    sys.exit(main())
