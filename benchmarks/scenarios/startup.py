"""Start-up cost of the worker face, beside Dagster Pipes' stdlib-only worker package."""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

from _core import DASH, Context, Results, Row, Table, Target, num, verdict

IMPORT_GOAL = Target(
    "ratio",
    "<=",
    1.0,
    goal="`import pipes_bus` is no slower than `import dagster_pipes`",
    shown="{value:.2f}x ({import_ms:.1f} ms against {reference_ms:.1f} ms)",
)
# Timed in a fresh interpreter: the import statement alone, and what it loaded.
TIMED = """import sys, time
loaded = len(sys.modules)
t = time.perf_counter()
import {module}
t = time.perf_counter() - t
print(t * 1000, len(sys.modules) - loaded)"""
# The same, then opening the worker of the session the environment names, and closing it.
OPEN = """import sys, time
loaded = len(sys.modules)
t0 = time.perf_counter()
import pipes_bus
t1 = time.perf_counter()
worker = pipes_bus.open_worker()
t2 = time.perf_counter()
worker.close()
t3 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, len(sys.modules) - loaded)"""


def _python(code: str, env: dict[str, str] | None = None, *flags: str) -> tuple[str, str, float]:
    """Run ``python [flags] -c code`` in a fresh interpreter: stdout, stderr, wall ms."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", code],
        capture_output=True,
        text=True,
        env=env or os.environ.copy(),
        check=True,
    )
    return done.stdout, done.stderr, (time.perf_counter() - started) * 1000


def _importtime_ms(stderr: str, module: str) -> float:
    """The cumulative time ``-X importtime`` gives the top-level import of ``module``."""
    for line in stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].rstrip() == f" {module}":
            return int(parts[1]) / 1000
    raise ValueError(f"no -X importtime line for {module}")


def import_time(ctx: Context) -> Iterator[Row]:
    """Import time of the worker face, and of opening a worker, in fresh interpreters

    Each run is a new ``python -c``: ``time.perf_counter()`` around the import statement
    (nothing subtracted), then ``python -X importtime -c "import X"`` for the cumulative
    time it reports; the modules are measured alternately, ``runs`` times each, medians
    shown. Then ``import pipes_bus; pipes_bus.open_worker()`` in a process launched with
    the environment of a real session on a local directory (``open_session``).
    """
    count = ctx.opt("runs", 15, quick=5)
    modules = ["pipes_bus"]
    if importlib.util.find_spec("dagster_pipes"):
        modules.append("dagster_pipes")
    found: dict[str, dict[str, list[float]]] = {m: {} for m in modules}
    for k in range(count):
        for module in modules[k % 2 :] + modules[: k % 2]:  # alternate which goes first
            out, _, wall = _python(TIMED.format(module=module))
            _, err, _ = _python(f"import {module}", None, "-X", "importtime")
            import_ms, loaded = out.split()
            for key, value in (("import_ms", float(import_ms)), ("modules", int(loaded))):
                found[module].setdefault(key, []).append(value)
            found[module].setdefault("process_ms", []).append(wall)
            found[module].setdefault("importtime_ms", []).append(_importtime_ms(err, module))
    medians = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in found.items()}
    for module in modules:
        metrics = {
            **medians[module],
            "import_ms_all": [round(v, 2) for v in found[module]["import_ms"]],
        }
        targets = []
        if module == "pipes_bus" and "dagster_pipes" in medians:
            reference = medians["dagster_pipes"]["import_ms"]
            metrics.update(reference_ms=reference, ratio=metrics["import_ms"] / reference)
            targets = [IMPORT_GOAL]
        yield Row(f"import {module}", {"module": module, "runs": count}, metrics, targets=targets)

    from pipes_bus.orchestrator import open_session

    opened: dict[str, list[float]] = {}
    problems = []
    bus = ctx.tmp / "import-time-bus"
    for _ in range(count):
        with open_session(str(bus)) as session:
            out, _, wall = _python(OPEN, {**os.environ, **session.env})
            reason = session.wait().reason()
            if reason:
                problems.append(f"session: {reason}")
        values = [*map(float, out.split()), wall]
        for key, value in zip(
            ("import_ms", "open_ms", "close_ms", "modules", "process_ms"), values, strict=True
        ):
            opened.setdefault(key, []).append(value)
    metrics = {k: statistics.median(v) for k, v in opened.items()}
    metrics["open_ms_all"] = [round(v, 1) for v in opened["open_ms"]]
    label = "import pipes_bus; pipes_bus.open_worker()"
    yield Row(label, {"module": "pipes_bus", "open_worker": True, "runs": count}, metrics, problems)


def tables(rows: list[Row]) -> dict[str, Table]:
    cells = []
    for r in rows:
        m = r.metrics
        opened = (
            f"{m['open_ms']:.1f} ms (+ close {m['close_ms']:.1f} ms)" if "open_ms" in m else DASH
        )
        cells.append(
            [
                f"`{r.label}`",
                f"{m['import_ms']:.1f} ms",
                f"{m['importtime_ms']:.1f} ms" if "importtime_ms" in m else DASH,
                num(m["modules"]),
                opened,
                f"{m['process_ms']:.0f} ms",
                str(r.params["runs"]),
                verdict(r),
            ]
        )
    headers = ["statement", "import (median)", "`-X importtime`", "modules loaded"]
    headers += ["`open_worker()`", "whole process", "runs", "goal"]
    return {"": (headers, cells)}


def compare(results: Results) -> list[list[str]]:
    ours = next((r for r in results.rows("import-time") if "ratio" in r.metrics), None)
    if ours is None:
        return []
    m = ours.metrics
    case = "Importing the worker package (a fresh interpreter, median)"
    return [[case, f"{m['reference_ms']:.1f} ms", f"{m['import_ms']:.1f} ms"]]
