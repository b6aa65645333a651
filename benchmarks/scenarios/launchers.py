"""What each launcher adds: from launch to the first event, and from the last event to exit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _core import DASH, Context, Row, Table, ms, percentile
from _procs import pipes_bus_cli

REPO = Path(__file__).resolve().parents[2]
# One message, then close: the work itself costs next to nothing.
WORKER = "import pipes_bus\nwith pipes_bus.open_worker() as w:\n    w.report_custom_message(1)\n"


@contextlib.contextmanager
def _platform(name: str, bus: str) -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    """(launcher, options, environment) for ``name``, its platform running meanwhile."""
    from pipes_bus.testing import platforms

    if name in ("subprocess", "dask"):
        yield name, {}, {}
        return
    plat = platforms.start(name)
    try:
        if name in ("docker", "podman"):
            image = platforms.build_host_image(plat.env["DOCKER_HOST"])
            volumes = platforms.host_mounts(str(REPO))
            yield "docker", {"image": image, "volumes": volumes, "network": "host"}, plat.env
        elif name == "slurm":
            yield "slurm", {"partition": "debug"}, plat.env
        else:
            yield "ray", {"address": plat.env["RAY_ADDRESS"]}, plat.env
    finally:
        plat.stop()


def _missing(name: str) -> str | None:
    from pipes_bus.testing.platforms import missing

    if name == "subprocess":
        return None
    if name == "dask":
        import importlib.util

        return None if importlib.util.find_spec("distributed") else "pip install dask[distributed]"
    return missing(name)


def _once(
    launcher: str, options: dict[str, Any], env: dict[str, str], bus: str, worker: str
) -> dict[str, float]:
    """One ``pipes-bus run --events -``: seconds from launch to the first event and to the
    worker's ``opened`` (its own clock, this host), and from ``closed`` to exit."""
    import json

    argv = [*pipes_bus_cli(), "run", "-q", "--bus", bus, "--events", "-", "--launcher", launcher]
    for key, value in options.items():
        argv += ["-L", f"{key}={json.dumps(value)}"]
    argv += ["--", sys.executable, worker]
    started = time.time()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env}, text=True
    )
    assert proc.stdout is not None
    first = opened = closed = None
    for line in proc.stdout:
        now = time.time()
        event = json.loads(line)
        if "-output-" in event.get("writer", ""):
            continue  # the launcher's forwarded platform output
        first = first or now
        if event["kind"] == "opened":
            opened = event["time"]
        elif event["kind"] == "closed":
            closed = now
    _, stderr = proc.communicate(timeout=300)
    ended = time.time()
    if proc.returncode != 0 or None in (first, opened, closed):
        raise RuntimeError(f"exit {proc.returncode}: {stderr.strip().splitlines()[-1:]}")
    assert first is not None and opened is not None and closed is not None
    return {
        "to_first_event": first - started,
        "to_opened": opened - started,
        "closed_to_exit": ended - closed,
        "total": ended - started,
    }


def launchers(ctx: Context) -> Iterator[Row]:
    """Launch overhead: from `pipes-bus run` to the first event, and from the last to exit

    For each launcher, on its real platform started for the scenario (a private dockerd,
    Podman service, one-node Slurm, Ray head; Dask's own LocalCluster), ``trials`` runs of
    a worker that reports one message: the time from starting ``pipes-bus run --launcher``
    to the first event it prints, to the worker's ``opened`` (its own timestamp, same
    host), and from the ``closed`` event to the command's exit. The image for containers
    is the host's /usr bind-mounted (no registry here); a real image pulls first.
    """
    trials = ctx.opt("trials", 5, quick=1)
    chosen = ctx.opt(
        "launchers",
        ["subprocess", "docker", "podman", "slurm", "ray", "dask"],
        quick=["subprocess", "docker", "slurm"],
    )
    for name in chosen:
        hint = _missing(name)
        if hint:
            yield Row(name, {"launcher": name}, {"skipped": hint})
            continue
        with tempfile.TemporaryDirectory(prefix="pb-bench-launch-") as tmp:
            worker = Path(tmp) / "worker.py"
            worker.write_text(WORKER)
            runs, problems = [], []
            with _platform(name, tmp) as (launcher, options, env):
                if launcher == "docker":
                    options = {**options, "volumes": [*options["volumes"], f"{tmp}:{tmp}:rw"]}
                for _ in range(trials):
                    try:
                        runs.append(_once(launcher, options, env, f"{tmp}/bus", str(worker)))
                    except Exception as exc:
                        problems.append(f"{type(exc).__name__}: {exc}")
        metrics: dict[str, Any] = {"trials": len(runs)}
        for key in ("to_first_event", "to_opened", "closed_to_exit", "total"):
            values = sorted(r[key] * 1000 for r in runs)
            metrics[f"{key}_ms"] = percentile(values, 0.5)
        yield Row(name, {"launcher": name}, metrics, problems)


def tables(rows: list[Row]) -> dict[str, Table]:
    headers = ["launcher", "runs", "launch to first event", "launch to the worker's opened"]
    headers += ["last event to exit", "whole run (one message)"]
    cells = []
    for r in rows:
        m = r.metrics
        if "skipped" in m:
            cells.append([r.label, "skipped: " + m["skipped"], DASH, DASH, DASH, DASH])
            continue
        cells.append(
            [
                r.label,
                str(m["trials"]),
                ms(m.get("to_first_event_ms")),
                ms(m.get("to_opened_ms")),
                ms(m.get("closed_to_exit_ms")),
                ms(m.get("total_ms")),
            ]
        )
    return {"": (headers, cells)}
