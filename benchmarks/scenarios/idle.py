"""What an idle session costs: requests and bytes per idle minute, on every store."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _core import (
    DASH,
    RUN_OTHERS,
    Context,
    Results,
    Row,
    Table,
    Target,
    figure,
    kinds,
    num,
    save_figure,
    verdict,
)
from _procs import pipes_bus_cli, workload
from _proxy import Sample, rates, trailing
from _stores import Store, open_store, s3_proxied

from pipes_bus.log import ChunkWriter
from pipes_bus.messages import Opened, WriterInfo
from pipes_bus.orchestrator import Session

IDLE_GOAL = Target(
    "orchestrator_requests_per_s",
    "<=",
    1.0,
    goal="An idle session's orchestrator on S3 sends at most 1 request/s once backed off, "
    "whatever its writers",
    shown="{value:.2f} requests/s",
    full_only=True,
)
CONTROL_GOAL = Target(
    "worker_usd_per_writer_hour",
    "<=",
    0.001,
    goal="A worker's cancel checks and heartbeats on S3 cost at most $0.001 per writer-hour",
    shown="${value:.5f} ({worker_requests_per_writer_hour:,.0f} requests)",
)


class InProcess:
    """A real Session following one writer that opened and then says nothing, in this
    process; its transport's request counts are sampled every second."""

    def __init__(self, store: Store) -> None:
        self.transport = store.transport()  # the session's: its requests are counted
        self.session = Session(store.url, collect=False, transport=self.transport)
        self.writer = ChunkWriter(store.transport(), self.session.id, "w-idle")
        self.writer.write(Opened(time=time.time(), info=WriterInfo(id="w-idle")))
        self.writer.flush()
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        follow = self.session.follow(done=self.stop.is_set, grace=0.0)
        self.threads = [threading.Thread(target=deque, args=(follow, 0), daemon=True)]
        self.threads.append(threading.Thread(target=self._sample, daemon=True))
        for thread in self.threads:
            thread.start()

    def _sample(self) -> None:
        stats = self.transport.stats
        while not self.stop.is_set():
            snap = stats.snapshot()
            nbytes = snap["bytes_received"] + snap["bytes_sent"]
            self.samples.append((time.monotonic() - self.t0, snap["requests"], nbytes))
            self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.writer.close()
        self.session.close()


def idle(ctx: Context) -> Iterator[Any]:
    """Idle sessions: S3 with 1, 8 and 64 writers, and one writer on every other store

    On S3, sessions whose writers (separate processes) opened and then report nothing run
    under ``pipes-bus run`` with the defaults, each behind its own counting proxy (every
    request of the workers and the orchestrator counted at the store, the workers' cancel
    checks and heartbeats apart from the orchestrator's requests). On the other stores
    a real ``Session`` in this process follows one silent writer, counted by its
    transport. They run in the background while the rest of the suite runs (not during
    the bursts: an idle session polls fast at first); the rates are taken over the last
    ``window`` seconds of ``seconds`` idle, once backed off.
    """
    seconds, span = ctx.opt("seconds", 220.0, quick=12.0), ctx.opt("window", 150.0, quick=6.0)
    with contextlib.ExitStack() as stack:
        probes, sessions = [], []
        for name in ctx.opt("stores", ["memory", "file", "azure", "gcs"]):
            store = stack.enter_context(open_store(name))
            probe = InProcess(store)
            stack.callback(probe.close)
            probes.append((name, probe))
        for writers in ctx.opt("s3_writers", [1, 8, 64], quick=[1, 8]):
            store = stack.enter_context(s3_proxied())
            until, end = time.time() + seconds, store.proxy.now() + seconds
            args = workload(
                "idle", "--procs", str(writers), "--until", f"{until:.3f}", *store.preload()
            )
            argv = [*pipes_bus_cli(), "run", "--bus", store.url, *store.storage_args(), "--", *args]
            err = stack.enter_context(open(ctx.tmp / f"idle-{writers}.txt", "w+b"))
            env = {**os.environ, **store.env}
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
            sessions.append((writers, store, process, err, end))
        deadline = time.monotonic() + 30  # every writer opens before anything else is timed
        while time.monotonic() < deadline and any(
            s.proxy.snapshot()["put"] < w for w, s, *_ in sessions
        ):
            time.sleep(0.2)
        yield RUN_OTHERS
        time.sleep(max([0.0] + [p.t0 + seconds + 1 - time.monotonic() for _, p in probes]))
        for name, probe in probes:  # each idle for ``seconds`` from its start
            metrics = rates(probe.samples, seconds - span, seconds)
            params = {
                "store": name,
                "writers": 1,
                "how": "in process",
                "window_s": span,
                "idle_s": seconds,
            }
            yield Row(f"{name}, 1 writer", params, metrics)
        for writers, store, process, err, end in sessions:
            try:
                code = process.wait(timeout=seconds + 120)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            err.seek(0)
            last = err.read().decode(errors="replace").strip().splitlines()[-1:]
            metrics = rates(store.proxy.samples, end - 1 - span, end - 1)
            metrics["worker_requests_per_writer_hour"] = (
                metrics["worker_requests_per_s"] * 3600 / writers
            )
            metrics["worker_usd_per_writer_hour"] = metrics["worker_usd_per_hour"] / writers
            series = trailing(store.proxy.samples, end - 1)
            over = [t for t, rate in series if t >= 60 and rate > 1.0]  # the trailing 60 s
            metrics["under_1_per_s_after_s"] = next(
                (t for t, _ in series if t >= 60 and (not over or t > over[-1])), None
            )
            params = {
                "store": "s3",
                "writers": writers,
                "how": "pipes-bus run",
                "window_s": span,
                "idle_s": seconds,
            }
            problems = [f"the idle session exited {code}: {last}"] if code else []
            label = f"s3, {writers} writer{'s' if writers > 1 else ''}"
            targets = [IDLE_GOAL, CONTROL_GOAL]
            yield Row(label, params, metrics, problems, targets, {"rate_60s": series})


def tables(rows: list[Row]) -> dict[str, Table]:
    cells = []
    for r in rows:
        m, p = r.metrics, r.params
        after = m.get("under_1_per_s_after_s")
        s3 = p["store"] == "s3"
        control = DASH
        if s3:
            control = f"{m['worker_requests_per_writer_hour']:,.0f} requests, "
            control += f"${m['worker_usd_per_writer_hour']:.5f}"
        orchestrator = m.get("orchestrator_requests_per_s", m["requests_per_s"]) * 60
        cells.append(
            [
                p["store"],
                str(p["writers"]),
                "`pipes-bus run`, counted at the store" if s3 else "a Session in process",
                f"{orchestrator:,.1f}",
                kinds({k: v * 60 for k, v in m["requests_per_s_by_kind"].items()}, 1),
                f"{m['bytes_per_minute'] / 1e3:,.1f} kB",
                f"${m.get('orchestrator_usd_per_hour', m['usd_per_hour']):.4f}" if s3 else DASH,
                control,
                f"{after:g} s" if after is not None else ("not within the run" if s3 else DASH),
                verdict(r),
            ]
        )
    headers = ["store", "writers", "measured", "orchestrator requests per idle minute"]
    headers += ["all requests by kind (per minute)", "bytes per minute"]
    headers += ["orchestrator $ per hour", "workers' cancel checks and beats per writer-hour"]
    headers += ["trailing 60 s average under 1/s from", "goal"]
    return {"": (headers, cells)}


def plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    mine = [r for r in rows if r.series.get("rate_60s")]
    if not mine:
        return
    fig, ax = figure(
        "S3: the orchestrator's requests/s in an idle session (trailing 60 s average)",
        "seconds since it started",
        "requests per second",
    )
    for row in mine:
        bins = row.series["rate_60s"]
        rate = row.metrics.get("orchestrator_requests_per_s", row.metrics["requests_per_s"])
        label = f"{row.label}: {rate:.2f}/s over the last "
        label += f"{row.params['window_s']:g} s"
        ax.plot([b[0] for b in bins], [b[1] for b in bins], label=label)
    ax.axhline(IDLE_GOAL.limit, color="red", linestyle="--", label="goal: 1 request/s")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    save_figure(fig, path("idle.png"))


def compare(results: Results) -> list[list[str]]:
    rows = [r for r in results.rows("idle") if r.params["store"] == "s3"]
    text = ", ".join(
        f"{r.label[4:]}: {num(r.metrics.get('orchestrator_requests_per_s'), 2)}" for r in rows
    )
    case = "Idle session on S3 (the orchestrator's requests/s, once backed off)"
    return [[case, "not measured", text]] if rows else []
