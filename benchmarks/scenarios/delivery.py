"""End to end through the real ``pipes-bus run`` CLI: bursts, memory, fan-in, a bad payload."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _core import (
    DASH,
    Context,
    Results,
    Row,
    Table,
    Target,
    figure,
    median_run,
    num,
    one,
    pick,
    runs,
    save_figure,
    thousands,
    verdict,
)
from _procs import checked, replay_cli, run_cli
from _reference import HAVE_DAGSTER, ReferenceRun, run_reference
from _stores import BUCKET, open_store

SPEED_GOAL = Target(
    "wall_s",
    "<=",
    3.0,
    goal="1,000,000 small messages through `pipes-bus run` on a local directory in at most 3 s",
    shown="{value:.2f} s",
    full_only=True,
)
S3_GOAL = Target(
    "speedup",
    ">=",
    10,
    goal="1,000,000 messages over S3 at least 10x faster than Dagster Pipes' S3 writer and reader",
    shown="{value:.1f}x ({reference_s:.1f} s against {wall_s:.2f} s)",
    full_only=True,
)
MEMORY_GOAL = Target(
    "worker_peak_mb",
    "<=",
    150,
    goal="A worker streaming 1 GB of messages stays under 150 MB of memory",
    shown="{value:,.0f} MB",
    full_only=True,
)
FANIN_GOAL = Target(
    "errors",
    "<=",
    0,
    goal="64 processes writing into one session: every message exactly once, in order",
    shown="{value:,} errors in {delivered:,} messages",
)
ENCODE_GOAL = Target(
    "errors",
    "<=",
    0,
    goal="An unencodable payload fails at the call, and nothing else is lost",
    shown="{delivered:,} of {sent:,} delivered, {value} errors",
)
SYSTEMS = {"pipes_bus": "pipes_bus", "dagster-pipes": "Dagster Pipes"}
WHERE = {"file": "a local directory", "s3": "S3 (moto)"}
REFERENCE = {
    "file": "its default local file transport",
    "s3": "its S3 writer and reader (defaults)",
}


def _reference_row(label: str, params: dict[str, Any], done: list[ReferenceRun], sent: int) -> Row:
    ref = median_run(done, key=lambda r: r.run_s)
    delivered = [len(r.payloads) for r in done]
    metrics = {
        "wall_s": ref.run_s,
        "wall_s_all": [round(r.run_s, 3) for r in done],
        "total_s": ref.total_s,  # with Dagster's own run machinery
        "sent": sent,
        "delivered": len(ref.payloads),
        "delivered_all": delivered,
        "msgs_per_s": len(ref.payloads) / ref.run_s if ref.run_s else None,
        "raised_at_call": ref.worker.get("raised_at_call"),
        "closed_received": [r.methods.get("closed", 0) > 0 for r in done],
        "reported_success": [r.success for r in done],
        "dagster_warnings": ref.problems[:5],
        "worker_emit_s": ref.worker.get("seconds"),
    }
    return Row(label, {"system": "dagster-pipes", **params}, metrics)


def burst(ctx: Context) -> Iterator[Row]:
    """Bursts of small messages, end to end, beside Dagster Pipes in the same run

    One worker sends ``{"i": i}`` as fast as it can. pipes_bus: ``pipes-bus run --events
    FILE`` from launch to exit, every run's events then checked (each message exactly
    once, in order). Dagster Pipes, wired as Dagster documents it (_reference.py): its
    default local file transport, or ``PipesS3MessageReader`` with the worker's
    ``PipesS3MessageWriter``, at their defaults, timed around ``PipesSubprocessClient.run``
    (launch until the reader is done; Dagster's run machinery is not counted).
    """
    cases = [("file", 100_000, []), ("file", 1_000_000, [SPEED_GOAL]), ("s3", 1_000_000, [S3_GOAL])]
    if ctx.quick:
        cases = [("file", 20_000, [SPEED_GOAL]), ("s3", 10_000, [S3_GOAL])]
    repeat = ctx.opt("repeat", 3, quick=1)
    for name, n, goals in cases:
        params = {"store": name, "messages": n}
        with open_store(name) as store:
            ours, problems = checked(store, ["burst", "--count", str(n)], ctx.tmp, 1, n, repeat)
        reference = None
        if HAVE_DAGSTER:
            reader = "s3" if name == "s3" else "default"
            times = 1 if name == "s3" else repeat  # the reference's losses vary from run to run
            done = [
                run_reference(
                    ["burst", "--count", str(n)], reader=reader, tmp=ctx.tmp, bucket=BUCKET
                )
                for _ in range(times)
            ]
            label = f"Dagster Pipes, {REFERENCE[name]}, {n:,} messages"
            reference = _reference_row(label, {**params, "repeat": times}, done, n)
            ours.update(
                reference_s=reference.metrics["wall_s"],
                speedup=reference.metrics["wall_s"] / ours["wall_s"],
            )
        label = f"pipes_bus, {WHERE[name]}, {n:,} messages"
        yield Row(label, {"system": "pipes_bus", **params, "repeat": repeat}, ours, problems, goals)
        if reference:
            yield reference


def _delivered(row: Row) -> str:
    m = row.metrics
    return f"{runs(m['delivered_all'], '{:,}')} of {m.get('sent') or row.params['messages']:,}"


def _reported(row: Row) -> str:
    if row.params["system"] == "pipes_bus":
        return f"exit {row.metrics.get('exit_code')}" + ("" if not row.problems else " (problems)")
    return " / ".join("success" if v else "failure" for v in row.metrics["reported_success"])


def burst_tables(rows: list[Row]) -> dict[str, Table]:
    cells = [
        [
            f"{r.params['messages']:,} on {WHERE[r.params['store']]}",
            SYSTEMS[r.params["system"]],
            f"{r.metrics['wall_s']:.2f} s",
            runs(r.metrics["wall_s_all"]),
            _delivered(r) + (", each checked" if r.params["system"] == "pipes_bus" else ""),
            _reported(r),
            num(r.metrics.get("orchestrator_peak_mib"))
            + (" MiB" if "orchestrator_peak_mib" in r.metrics else ""),
            verdict(r),
        ]
        for r in rows
    ]
    headers = ["messages", "system", "seconds (median)", "every run", "delivered, every run"]
    return {"": ([*headers, "run reported", "orchestrator peak RSS", "goal"], cells)}


def burst_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    cases = list(dict.fromkeys((r.params["store"], r.params["messages"]) for r in rows))
    fig, (ax, ax2) = figure("Bursts of small messages, end to end", "", "", (11, 4.5), 2)
    for k, system in enumerate(SYSTEMS):
        found = [one(rows, system=system, store=s, messages=n) for s, n in cases]
        xs = [i + (k - 0.5) * 0.38 for i in range(len(cases))]
        color = ("tab:blue", "tab:orange")[k]
        ax.bar(
            xs,
            [r.metrics["wall_s"] if r else 0 for r in found],
            0.36,
            color=color,
            label=SYSTEMS[system],
        )
        worst = [min(r.metrics["delivered_all"]) / r.params["messages"] if r else 0 for r in found]
        ax2.bar(xs, worst, 0.36, color=color, label=SYSTEMS[system])
    for a, label in ((ax, "seconds (median)"), (ax2, "share delivered (worst run)")):
        a.set_xticks(range(len(cases)), [f"{n:,}\n{WHERE[s]}" for s, n in cases])
        a.set_ylabel(label)
        a.legend()
    save_figure(fig, path("burst.png"))


def burst_compare(results: Results) -> list[list[str]]:
    rows, out = results.rows("burst"), []
    for mine in pick(rows, system="pipes_bus"):
        p = mine.params
        theirs = one(rows, system="dagster-pipes", store=p["store"], messages=p["messages"])
        if theirs:
            m, t = mine.metrics, theirs.metrics
            case = f"{p['messages']:,} small messages: {WHERE[p['store']]}, "
            case += f"against {REFERENCE[p['store']]}"
            them = f"{runs(t['wall_s_all'])} s; delivered {_delivered(theirs)}; "
            them += f"reported {_reported(theirs)}"
            us = f"{m['wall_s']:.2f} s ({m['speedup']:.1f}x faster); every message exactly once"
            out.append([case, them, us])
    return out


def memory(ctx: Context) -> Iterator[Row]:
    """Worker and orchestrator memory while streaming, and re-reading with pipes-bus tail

    One worker streams ``megabytes`` of payload in messages of each size (1,000 B x 1M =
    1 GB on a local directory; 100 MB on the cloud stores), without ``--events``. The
    worker's peak RSS is its own ``getrusage``; the orchestrator's (the CLI process) is
    sampled from /proc (VmHWM) every 50 ms. On the local directory the finished session is
    then read again by ``pipes-bus tail --events /dev/null``, as an orchestrator that starts
    late or restarts would.
    """
    plan = {"file": (1000.0, [1000, 262144]), "s3": (100.0, [1000])}
    plan |= {"azure": plan["s3"], "gcs": plan["s3"]}
    for name in ctx.opt("stores", list(plan), quick=["file"]):
        megabytes, sizes = plan[name]
        megabytes = ctx.opt("megabytes", megabytes, quick=20.0)
        with open_store(name) as store:
            for nbytes in sizes:
                count = max(1, int(megabytes * 1e6 / nbytes))
                session = f"s-bench-memory-{secrets.token_hex(4)}"
                args = ["stream", "--count", str(count), "--size", str(nbytes)]
                run = run_cli(store, args, ctx.tmp, session=session)
                worker = run.worker.get("peak_rss_mib")
                mb = count * nbytes / 1e6
                metrics = {
                    "wall_s": run.wall_s,
                    "payload_mb": mb,
                    "mb_per_s": mb / run.wall_s,
                    "worker_peak_mib": worker,
                    "worker_peak_mb": worker * (1 << 20) / 1e6 if worker else None,
                    "worker_peak_sampled_mib": run.worker_peak_sampled_mib,
                    "orchestrator_peak_mib": run.orchestrator_peak_mib,
                    **run.summary(),
                }
                params = {"store": name, "size": nbytes, "messages": count}
                label = f"{name}, {count:,} x {nbytes:,} B"
                rss = [[round(v, 1) for v in s] for s in run.rss[:: max(1, len(run.rss) // 400)]]
                goals = [MEMORY_GOAL] if name == "file" else []
                yield Row(
                    label,
                    {**params, "phase": "stream"},
                    metrics,
                    run.problems(count),
                    goals,
                    {"rss_mib": rss},
                )
                if name == "file":
                    again = replay_cli(store, session, ctx.tmp)
                    metrics = {
                        "wall_s": again.wall_s,
                        "payload_mb": mb,
                        "mb_per_s": mb / again.wall_s,
                    }
                    metrics |= {
                        "orchestrator_peak_mib": again.orchestrator_peak_mib,
                        **again.summary(),
                    }
                    yield Row(
                        f"{label}, re-read",
                        {**params, "phase": "replay"},
                        metrics,
                        again.problems(count),
                    )


def memory_tables(rows: list[Row]) -> dict[str, Table]:
    cells = []
    for r in rows:
        p, m = r.params, r.metrics
        replay = p["phase"] == "replay"
        cells.append(
            [
                p["store"],
                "re-read by `pipes-bus tail`" if replay else "streamed by a worker",
                f"{p['messages']:,} x {p['size']:,} B",
                f"{m['payload_mb']:,.0f} MB at {m['mb_per_s']:,.0f} MB/s",
                DASH if replay else f"{num(m['worker_peak_mib'], 1)} MiB",
                f"{m['orchestrator_peak_mib']:,.1f} MiB",
                verdict(r),
            ]
        )
    headers = ["store", "", "messages", "payload", "worker peak RSS", "orchestrator peak RSS"]
    return {"": ([*headers, "goal"], cells)}


def memory_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    mine = [r for r in rows if r.series.get("rss_mib") and r.params["store"] == "file"]
    if not mine:
        return
    fig, axes = figure(
        "Memory while streaming on a local directory", "seconds", "RSS (MiB)", (11, 4.5), 2
    )
    for ax, row in zip(axes, mine, strict=False):
        samples = row.series["rss_mib"]
        ax.set_title(f"{row.metrics['payload_mb']:,.0f} MB in {row.params['size']:,} B messages")
        ax.plot([t for t, _, _ in samples], [w for _, _, w in samples], label="worker")
        ax.plot([t for t, _, _ in samples], [o for _, o, _ in samples], label="orchestrator (CLI)")
        ax.axhline(150e6 / (1 << 20), color="red", linestyle="--", label="goal: worker 150 MB")
        ax.legend()
    save_figure(fig, path("memory.png"))


def fanin(ctx: Context) -> Iterator[Row]:
    """Fan-in: 1 to 64 writer processes into one session, on every shared store

    One worker program starts P processes (multiprocessing, fork), each its own writer
    labelled "rank r" sending N messages ``{"r": r, "i": i}``, under ``pipes-bus run
    --events FILE``. Every run's events are checked: P writers, each with exactly N custom
    messages, every seq and payload once, in order, the ranks 0..P-1, closed cleanly. The
    whole command is timed (median of ``repeat`` on the local directory).
    """
    for name in ctx.opt("stores", ["file", "s3", "azure", "gcs"]):
        writers = ctx.opt("writers", [1, 4, 16, 64] if name == "file" else [1, 8, 64], quick=[2])
        per = ctx.opt("per_writer", 5000 if name == "file" else 2000, quick=200)
        repeat = ctx.opt("repeat", 3 if name == "file" else 1, quick=1)
        with open_store(name) as store:
            for w in writers:
                args = ["fanin", "--procs", str(w), "--count", str(per), *store.preload()]
                metrics, problems = checked(store, args, ctx.tmp, w, per, repeat)
                params = {"store": name, "writers": w, "per_writer": per, "repeat": repeat}
                goals = [FANIN_GOAL] if w >= 64 else []
                yield Row(f"{name}, {w} x {per:,} messages", params, metrics, problems, goals)


def fanin_tables(rows: list[Row]) -> dict[str, Table]:
    cells = [
        [
            r.params["store"],
            f"{r.params['writers']} x {r.params['per_writer']:,}",
            f"{r.metrics['wall_s']:.2f} s"
            + (f" ({runs(r.metrics['wall_s_all'])})" if r.params["repeat"] > 1 else ""),
            num(r.metrics["msgs_per_s"]),
            f"{r.metrics['delivered']:,}, {r.metrics['errors']} errors",
            "{orchestrator_peak_mib:.0f} / {largest_process_peak_mib:.0f}".format_map(r.metrics),
            num(r.metrics.get("orchestrator_requests")),
            verdict(r),
        ]
        for r in rows
    ]
    headers = ["store", "writers x messages", "wall (median)", "msgs/s", "delivered"]
    headers += ["peak RSS MiB orchestrator / largest worker", "orchestrator requests", "goal"]
    return {"": (headers, cells)}


def fanin_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    fig, ax = figure(
        "Fan-in: writer processes into one session",
        "writer processes",
        "messages/s (whole command)",
    )
    for store in dict.fromkeys(r.params["store"] for r in rows):
        mine = pick(rows, store=store)
        label = f"{store}, {mine[0].params['per_writer']:,} per writer"
        ax.plot(
            [r.params["writers"] for r in mine],
            [r.metrics["msgs_per_s"] for r in mine],
            marker="o",
            label=label,
        )
    ax.set_xscale("log", base=2)
    thousands(ax.yaxis)
    ax.legend()
    save_figure(fig, path("fanin.png"))


def unencodable(ctx: Context) -> Iterator[Row]:
    """One unencodable payload among 200 messages, beside Dagster Pipes

    A worker sends N messages, then a payload JSON cannot encode (``object()``), then N
    more, and closes. Dagster Pipes on S3 (its S3 writer and reader at their defaults) and
    with its default file transport; pipes_bus on S3. Did the call raise, how many of the
    2N good messages and the ``closed`` arrived, and was the run reported a success.
    """
    n = 100
    args = ["unencodable", "--count", str(n)]
    if HAVE_DAGSTER:
        for reader, name in (("s3", "s3"), ("default", "file")):
            if name == "s3":
                print("  (a TypeError traceback from the reference worker's upload thread follows:")
                print("  that is the failure being measured)", flush=True)
            with open_store("s3"):  # starts moto and points boto3 at it
                done = [run_reference(args, reader=reader, tmp=ctx.tmp, bucket=BUCKET)]
            yield _reference_row(
                f"Dagster Pipes, {REFERENCE[name]}", {"store": name, "messages": 2 * n}, done, 2 * n
            )
    with open_store("s3") as store:
        metrics, problems = checked(store, args, ctx.tmp, 1, 2 * n)
    metrics["sent"] = 2 * n
    yield Row(
        "pipes_bus, S3 (moto)",
        {"system": "pipes_bus", "store": "s3", "messages": 2 * n},
        metrics,
        problems,
        [ENCODE_GOAL],
    )


def unencodable_tables(rows: list[Row]) -> dict[str, Table]:
    def cell(r: Row) -> list[str]:
        m = r.metrics
        closed = m.get("closed_received", [m.get("errors") == 0])
        return [
            SYSTEMS[r.params["system"]],
            REFERENCE[r.params["store"]]
            if r.params["system"] != "pipes_bus"
            else "S3 (moto), defaults",
            "yes" if m.get("raised_at_call") else "no",
            f"{m['delivered']:,} of {m['sent']:,}",
            "yes" if all(closed) else "no",
            _reported(r),
            verdict(r),
        ]

    headers = ["system", "transport", "raised at the call", "delivered", "closed received"]
    return {"": ([*headers, "run reported", "goal"], [cell(r) for r in rows])}


def unencodable_compare(results: Results) -> list[list[str]]:
    rows = results.rows("unencodable")
    theirs, ours = one(rows, system="dagster-pipes", store="s3"), one(rows, system="pipes_bus")
    if not (theirs and ours):
        return []
    t = theirs.metrics
    lost = "closed lost" if not all(t["closed_received"]) else "closed received"
    them = f"{t['delivered']} of {t['sent']} delivered, {lost}; reported {_reported(theirs)}"
    us = f"{ours.metrics['delivered']} of {ours.metrics['sent']} delivered; the bad call raised"
    return [["One unencodable value on S3", them, us]]
