"""Latency of a trickle of messages, its request cost, and Dagster Pipes' own trickles."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _checks import Latencies
from _core import (
    DASH,
    Context,
    Results,
    Row,
    Table,
    Target,
    cdf_lines,
    figure,
    kinds,
    ms,
    one,
    percentile,
    pick,
    save_figure,
    verdict,
)
from _procs import run_cli, workload
from _proxy import rates
from _reference import run_reference
from _stores import BUCKET, Store, open_store, s3_proxied

from pipes_bus.log import ChunkWriter, Schedule, SessionReader, WriterSettings
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Event, run_subprocess

RATE = 100.0
PROFILES = {"default": [], "low-latency": ["--linger", "0.02", "--poll", "0.02"]}
LOCAL_GOAL = Target(
    "p50_ms",
    "<=",
    50,
    goal="On a local directory, a message reaches the orchestrator within 50 ms (median)",
    shown="{value:.1f} ms",
)
S3_GOALS = {
    "default": Target(
        "p50_ms",
        "<=",
        1000,
        goal="On S3, a message arrives within 1 s (median) at the defaults",
        shown="{value:,.0f} ms",
    ),
    "low-latency": Target(
        "p50_ms",
        "<=",
        150,
        goal="On S3, within 150 ms (median) with `--linger 0.02 --poll 0.02`",
        shown="{value:,.0f} ms",
    ),
}


def _latency(got: Latencies, sent: int) -> dict[str, Any]:
    values = sorted(got.ms)
    return {
        "sent": sent,
        "delivered": len(got.seen),
        "errors": sent - len(got.seen) + got.duplicates,
        **{f"p{q}_ms": percentile(values, q / 100) for q in (50, 90, 99)},
        "max_ms": values[-1] if values else None,
    }


def _in_process(store: Store, seconds: float, low: bool, got: Latencies) -> None:
    """A writer and a following reader in this process (memory:// is no shared store)."""
    session = f"s-bench-{secrets.token_hex(6)}"
    writer = ChunkWriter(
        store.transport(), session, "w-trickle", WriterSettings(linger=0.02 if low else None)
    )
    reader = SessionReader(
        store.transport(), session, schedule=Schedule(0.02, 1.0) if low else None
    )

    def follow() -> None:
        for item in reader.follow():
            if type(item) is Event and type(item.message) is Custom:
                got.add(item.message.payload, time.time())

    thread = threading.Thread(target=follow)
    thread.start()
    start = time.monotonic()
    for i in range(int(RATE * seconds)):
        time.sleep(max(0.0, start + i / RATE - time.monotonic()))
        writer.write(Custom(time=time.time(), payload={"i": i, "t": time.time()}))
    writer.close()
    thread.join()


def _one(ctx: Context, store: Store, via: str, profile: str, seconds: float, rtt: float) -> Row:
    sent, got, problems = int(RATE * seconds), Latencies(), []
    args = ["trickle", "--rate", f"{RATE:g}", "--seconds", f"{seconds:g}"]
    metrics: dict[str, Any] = {}
    started, clock = store.proxy.now() if store.proxy else 0.0, time.perf_counter()
    if via == "in process":
        _in_process(store, seconds, profile != "default", got)
    elif via == "API":

        def on_event(item: Any) -> None:
            if type(item) is Event and type(item.message) is Custom:
                got.add(item.message.payload, time.time())

        options = dict(store.storage_options)
        result = run_subprocess(
            workload(*args),
            bus=store.url,
            env=store.env,
            storage_options=options,
            on_event=on_event,
        )
        problems += [f"session: {result.reason()}"] if result.reason() else []
        metrics["orchestrator_requests"] = sum(result.requests.get("requests", {}).values())
    else:
        run = run_cli(
            store, args, ctx.tmp, events="-", on_line=got.line_handler(), options=PROFILES[profile]
        )
        problems += run.problems()
        metrics.update(run.summary())
    metrics["wall_s"] = time.perf_counter() - clock
    if store.proxy:  # the steady part: from 2 s in (the worker is up) to the last message
        metrics.update(rates(store.proxy.samples, started + 2.0, started + 1.0 + seconds))
    goals = [LOCAL_GOAL] if store.name == "file" and profile == "default" else []
    goals += [S3_GOALS[profile]] if store.name == "s3" else []
    extra = f", +{rtt * 1000:g} ms per request" if rtt else ""
    params = {
        "store": store.name,
        "via": via,
        "profile": profile,
        "rtt_ms": rtt * 1000,
        "seconds": seconds,
    }
    return Row(
        f"{store.name}, {profile}{extra}, {via}",
        params,
        {**_latency(got, sent), **metrics},
        problems + got.problems(sent),
        goals,
        {"latency_cdf": got.cdf(sent)},
    )


def trickle(ctx: Context) -> Iterator[Row]:
    """Latency at 100 messages/s on every store, with the defaults and low-latency settings

    One worker sends 100 messages/s, each carrying ``time.time()`` at emit; latency is
    emit to delivery: the line arriving from ``pipes-bus run --events -`` (on the local
    directory also through the Python API, ``run_subprocess`` with ``on_event``; on
    memory:// a writer and a reader in one process). The low-latency setting is
    ``--linger 0.02 --poll 0.02``. On S3 every request goes through a counting proxy
    (worker and orchestrator, retries included), counted over the steady part of the run
    and priced at S3 Standard rates; then again with 30 ms added to every request, closer
    to a real S3 round trip than moto's ~3 ms.
    """
    seconds = ctx.opt("seconds", 10.0, quick=2.0)
    rtts = [0.0, *(ms / 1000 for ms in ctx.opt("s3_rtt_ms", [30.0], quick=[]))]
    for name in ctx.opt(
        "stores", ["memory", "file", "s3", "azure", "gcs"], quick=["memory", "file", "s3"]
    ):
        for rtt in rtts if name == "s3" else [0.0]:
            for profile in PROFILES:
                with s3_proxied(rtt=rtt) if name == "s3" else open_store(name) as store:
                    via = "pipes-bus run" if store.shared else "in process"
                    yield _one(ctx, store, via, profile, seconds, rtt)
        if name == "file":
            with open_store("file") as store:
                yield _one(ctx, store, "API", "default", seconds, 0.0)


def _cost(row: Row) -> list[str]:
    m = row.metrics
    if "requests_per_s" not in m:
        requests = m.get("orchestrator_requests")
        return [f"{requests / m['wall_s']:,.1f} (orchestrator)" if requests else DASH, DASH]
    by_kind = kinds(m["requests_per_s_by_kind"], 1)
    return [f"{m['requests_per_s']:,.1f} ({by_kind})", f"${m['usd_per_hour']:,.3f}"]


def trickle_tables(rows: list[Row]) -> dict[str, Table]:
    cells = []
    for r in rows:
        p, m = r.params, r.metrics
        setting = p["profile"] + (f", +{p['rtt_ms']:g} ms/request" if p["rtt_ms"] else "")
        latency = [ms(m["p50_ms"]), ms(m["p99_ms"]), ms(m["max_ms"])]
        cells.append(
            [
                p["store"],
                p["via"],
                setting,
                *latency,
                f"{m['delivered']:,} of {m['sent']:,}",
                *_cost(r),
                verdict(r),
            ]
        )
    headers = ["store", "consumer", "setting", "p50", "p99", "max", "delivered"]
    requests = "requests/s (S3: all, at the store, by kind; others: the orchestrator's)"
    return {"": ([*headers, requests, "$ per hour", "goal"], cells)}


def trickle_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    rows = [r for r in rows if r.params["via"] != "API"]
    fig, ax = figure(
        "Latency at 100 msg/s: p50 (bar) and p99 (tick)", "", "milliseconds (log scale)", (10, 4.5)
    )
    colors = {"default": "tab:blue", "low-latency": "tab:orange"}
    xs = range(len(rows))
    ax.bar(
        xs,
        [r.metrics["p50_ms"] or 0 for r in rows],
        color=[colors[r.params["profile"]] for r in rows],
    )
    ax.scatter(
        xs, [r.metrics["p99_ms"] or 0 for r in rows], marker="_", s=300, color="black", label="p99"
    )
    labels = [
        r.params["store"] + (f"\n+{r.params['rtt_ms']:g} ms" if r.params["rtt_ms"] else "")
        for r in rows
    ]
    ax.set_xticks(
        xs,
        [f"{label}\n{r.params['profile']}" for label, r in zip(labels, rows, strict=True)],
        fontsize=7,
    )
    ax.set_yscale("log")
    ax.legend()
    save_figure(fig, path("trickle.png"))


def reference_trickle(ctx: Context) -> Iterator[Row]:
    """Dagster Pipes at 100 messages/s: on S3 (writer interval=1, and defaults) and a file

    The same trickle through Dagster Pipes, wired as Dagster documents it: on S3 with the
    worker's ``PipesS3MessageWriter(interval=1)`` and the default ``PipesS3MessageReader``
    (the design notes' loss case), then both at their defaults, every request counted by
    the same proxy; and through its default local file transport. Sent against delivered,
    the latency of what was delivered, and whether Dagster reported success.
    """
    cases = [("s3", 1.0, ctx.opt("s3_interval_1_seconds", 60.0, quick=3.0))]
    cases += [("s3", None, ctx.opt("s3_default_seconds", 30.0, quick=0.0))]
    cases += [("file", None, ctx.opt("file_seconds", 10.0, quick=2.0))]
    for name, interval, seconds in cases:
        if not seconds:
            continue
        args = ["trickle", "--rate", f"{RATE:g}", "--seconds", f"{seconds:g}"]
        metrics: dict[str, Any] = {}
        if name == "s3":
            with s3_proxied() as store:
                saved = os.environ["AWS_ENDPOINT_URL_S3"]
                os.environ["AWS_ENDPOINT_URL_S3"] = store.proxy.url  # the reader's and the worker's
                started = store.proxy.now()
                try:
                    ref = run_reference(
                        args, reader="s3", tmp=ctx.tmp, bucket=BUCKET, writer_interval=interval
                    )
                finally:
                    os.environ["AWS_ENDPOINT_URL_S3"] = saved
                metrics = rates(
                    store.proxy.samples, started + min(3.0, seconds / 3), started + seconds
                )
        else:
            ref = run_reference(args, reader="default", tmp=ctx.tmp)
        got = Latencies()
        for when, payload in ref.received_at:
            got.add(payload, when)
        sent = ref.worker.get("sent") or int(RATE * seconds)
        setting = f"writer interval={interval:g}, reader default" if interval else "defaults"
        metrics |= {**_latency(got, sent), "reported_success": ref.success, "wall_s": ref.run_s}
        params = {"system": "dagster-pipes", "store": name, "setting": setting, "seconds": seconds}
        where = "S3" if name == "s3" else "its default local file transport"
        yield Row(
            f"Dagster Pipes, {where}, {setting}",
            params,
            metrics,
            series={"latency_cdf": got.cdf(sent)},
        )


def reference_tables(rows: list[Row]) -> dict[str, Table]:
    cells = [
        [
            "S3 (moto)" if r.params["store"] == "s3" else "default local file transport",
            r.params["setting"],
            f"{r.params['seconds']:g} s",
            f"{r.metrics['delivered']:,} of {r.metrics['sent']:,}",
            ms(r.metrics["p50_ms"]),
            ms(r.metrics["p99_ms"]),
            *(_cost(r) if r.params["store"] == "s3" else [DASH, DASH]),
            "success" if r.metrics["reported_success"] else "failure",
        ]
        for r in rows
    ]
    headers = ["transport", "setting", "run", "delivered", "p50", "p99", "requests/s", "$ per hour"]
    return {"": ([*headers, "Dagster reported"], cells)}


def reference_plot(rows: list[Row], results: Results, path: Callable[[str], Path]) -> None:
    ours = [r for r in results.rows("trickle") if r.params["via"] == "pipes-bus run"]
    fig, axes = figure(
        "100 msg/s: emit-to-delivery latency (CDF)",
        "latency (ms, log scale)",
        "share of messages sent",
        (12, 5),
        2,
    )
    for ax, store, title in zip(axes, ("file", "s3"), ("Local file", "S3 (moto)"), strict=True):
        ax.set_title(title)

        def label(r: Row) -> str:
            p, m = r.params, r.metrics
            name = (
                f"pipes_bus {p['profile']}" if "profile" in p else f"Dagster Pipes {p['setting']}"
            )
            extra = f" +{p['rtt_ms']:g} ms/request" if p.get("rtt_ms") else ""
            return f"{name}{extra}: p50 {ms(m['p50_ms'])}, {m['delivered']:,}/{m['sent']:,}"

        cdf_lines(ax, pick(ours, store=store) + pick(rows, store=store), label)
    save_figure(fig, path("trickle_cdf.png"))


def reference_compare(results: Results) -> list[list[str]]:
    ref, ours = results.rows("reference-trickle"), results.rows("trickle")
    interval1 = one(ref, store="s3", setting="writer interval=1, reader default")
    default, file_ref = one(ref, store="s3", setting="defaults"), one(ref, store="file")
    mine = one(ours, store="s3", profile="default", rtt_ms=0.0)
    low = one(ours, store="s3", profile="low-latency", rtt_ms=0.0)
    file_ours = one(ours, store="file", profile="default", via="pipes-bus run")

    def lat(r: Row | None, delivered: bool = False) -> str:
        if r is None:
            return DASH
        m = r.metrics
        text = f"p50 {ms(m['p50_ms'])}, p99 {ms(m['p99_ms'])}"
        return f"{m['delivered']:,} of {m['sent']:,} delivered, {text}" if delivered else text

    def cost(r: Row | None) -> str:
        return (
            f"{r.metrics['requests_per_s']:,.1f} requests/s, ${r.metrics['usd_per_hour']:,.3f}/hour"
            if r
            else DASH
        )

    return [
        [
            "100 msg/s over S3, writer interval=1 (Dagster Pipes) and defaults (pipes_bus)",
            lat(interval1, True),
            lat(mine, True),
        ],
        [
            "100 msg/s over S3, defaults",
            lat(default),
            f"{lat(mine)}; low-latency setting: {lat(low)}",
        ],
        [
            "Request cost of 100 msg/s on S3",
            f"interval=1: {cost(interval1)}; defaults: {cost(default)}",
            f"defaults: {cost(mine)}; low latency: {cost(low)}",
        ],
        [
            "100 msg/s through the default local transport",
            lat(file_ref, True),
            lat(file_ours, True),
        ],
    ]
