"""Shared reporting for the benchmark scripts: a table on stdout, JSON, Markdown and PNG files.

A benchmark builds a :class:`Report`, adds one :class:`Row` per measurement (its
parameters, its metrics, the correctness problems it found, the targets it is held to,
and any raw series worth plotting), then calls :meth:`Report.finish`. That prints the
table, writes ``results/<name>.json`` and ``results/<name>.md`` (``<name>-quick.*`` in
--quick mode) and returns the exit status: 1 if any row found a correctness problem
(or, with --strict, missed a target), else 0. Timing targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A stated goal: ``metrics[metric] op limit``, e.g. ``wall_s <= 3``.

    ``full_only`` targets are stated for the full problem size (1M messages, 1 GB);
    --quick runs shrink the size, so they are shown as n/a there.
    """

    metric: str
    op: str  # "<=" or ">="
    limit: float
    source: str = ""  # where the target is stated, e.g. "issue 3"
    full_only: bool = False

    def judge(self, metrics: Mapping[str, Any], quick: bool) -> str:
        """PASS, FAIL or n/a."""
        if self.full_only and quick:
            return "n/a"
        value = metrics.get(self.metric)
        if value is None:
            return "FAIL"
        ok = value <= self.limit if self.op == "<=" else value >= self.limit
        return "PASS" if ok else "FAIL"

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:,g}"


@dataclass
class Row:
    """One measurement: what was run (params), what was measured, and what went wrong."""

    scenario: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # raw data for plots, kept in JSON

    def verdicts(self, quick: bool) -> list[str]:
        """The status of each target, in order."""
        return [t.judge(self.metrics, quick) for t in self.targets]

    def status(self, quick: bool) -> str:
        """FAIL on any problem or missed target; PASS if every judged target was met."""
        verdicts = self.verdicts(quick)
        if self.problems or "FAIL" in verdicts:
            return "FAIL"
        if "PASS" in verdicts:
            return "PASS"
        return "n/a" if verdicts else "-"


Column = tuple[str, Callable[[Row], str]]


def target_column(quick: bool) -> Column:
    """A column listing each target of the row with its verdict."""

    def text(row: Row) -> str:
        pairs = zip(row.targets, row.verdicts(quick), strict=True)
        return "; ".join(f"{t} {v}" for t, v in pairs) or "-"

    return ("target", text)


def status_column(quick: bool) -> Column:
    """A column with the row's overall status."""
    return ("status", lambda row: row.status(quick))


class Report:
    """Rows of one benchmark script, rendered as a text table, Markdown and JSON."""

    def __init__(self, name: str, title: str, args: argparse.Namespace) -> None:
        self.name = name
        self.title = title
        self.quick: bool = args.quick
        self.strict: bool = args.strict
        self.out = Path(args.out)
        self.rows: list[Row] = []
        self.started = time.perf_counter()
        self.date = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.machine = machine()

    def add(self, row: Row) -> Row:
        """Record ``row`` and print a one-line progress note on stderr."""
        self.rows.append(row)
        print(
            f"  done: {row.scenario} {_short(row.params)} -> {row.status(self.quick)}",
            file=sys.stderr,
            flush=True,
        )
        return row

    def path(self, suffix: str) -> Path:
        """Where an output file of this report goes, e.g. ``path("latency.png")``."""
        self.out.mkdir(parents=True, exist_ok=True)
        stem = f"{self.name}-quick" if self.quick else self.name
        return self.out / (f"{stem}_{suffix}" if suffix[0] != "." else stem + suffix)

    def finish(self, columns: Sequence[Column]) -> int:
        """Print the table, write JSON and Markdown; return the exit status."""
        columns = [*columns, target_column(self.quick), status_column(self.quick)]
        cells = [[fn(row) for _, fn in columns] for row in self.rows]
        headers = [name for name, _ in columns]
        elapsed = time.perf_counter() - self.started
        print(f"\n{self.title}{'  [--quick: reduced sizes]' if self.quick else ''}")
        print(f"{self.date.isoformat()}  {self.machine['summary']}  ({elapsed:.1f} s)")
        print(_text_table(headers, cells))
        problems = [(row, p) for row in self.rows for p in row.problems]
        for row, problem in problems:
            print(f"  problem in {row.scenario} {_short(row.params)}: {problem}")
        self.path(".md").write_text(self._markdown(headers, cells))
        self.path(".json").write_text(json.dumps(self._json(elapsed), indent=1) + "\n")
        print(f"results: {self.path('.json')} (and .md, .png)")
        failed = bool(problems) or (
            self.strict and any(r.status(self.quick) == "FAIL" for r in self.rows)
        )
        return 1 if failed else 0

    def _json(self, elapsed: float) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            data = asdict(row)
            verdicts = zip(row.targets, row.verdicts(self.quick), strict=True)
            data["targets"] = [{**asdict(t), "status": v} for t, v in verdicts]
            data["status"] = row.status(self.quick)
            rows.append(data)
        return {
            "benchmark": self.name,
            "title": self.title,
            "quick": self.quick,
            "date": self.date.isoformat(),
            "seconds": round(elapsed, 2),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "machine": self.machine,
            "rows": rows,
        }

    def _markdown(self, headers: list[str], cells: list[list[str]]) -> str:
        lines = [
            f"## {self.title}{' (quick)' if self.quick else ''}",
            "",
            f"{self.date.isoformat()}, {self.machine['summary']}",
            "",
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines) + "\n"


def _short(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _text_table(headers: list[str], cells: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


# --- command line ----------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark script shares."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes for CI smoke runs (each script < 20 s); size-bound "
        "targets are shown as n/a",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed too (default: only on lost or "
        "duplicated data, wrong counts and other correctness problems)",
    )
    p.add_argument(
        "--out",
        default=str(RESULTS),
        metavar="DIR",
        help="where JSON, Markdown and PNG results go (default: %(default)s)",
    )
    return p


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse type for comma-separated lists: ``type=csv(int)``."""
    return lambda text: [kind(part) for part in text.split(",") if part]


# --- numbers ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def num(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or '-'."""
    return "-" if value is None else f"{value:,.{digits}f}"


# --- plots -----------------------------------------------------------------------------------


def figure(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (8, 4.5)) -> Any:
    """A fresh matplotlib (figure, axes) pair on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def thousands(axis: Any) -> None:
    """Label a matplotlib axis 250k, 500k, ... instead of 250000."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k" if v else "0"))


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- machine ---------------------------------------------------------------------------------


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, OS, Python, versions, git state."""
    mem_kb = _first("/proc/meminfo", "MemTotal")
    mem_gib = int(mem_kb.split()[0]) / MiB if mem_kb else None
    cpu = _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    cores = os.cpu_count()
    dirty = _git("status", "--porcelain", "--", "pipes_bus")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": cores,
        "memory_gib": round(mem_gib, 1) if mem_gib else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            d: _version(d)
            for d in (
                "pipes-bus",
                "msgspec",
                "fsspec",
                "s3fs",
                "gcsfs",
                "adlfs",
                "moto",
                "dagster",
                "dagster-pipes",
                "dagster-aws",
            )
        },
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_pipes_bus_modified": bool(dirty) if dirty is not None else None,
        # Other work on the machine skews timings: the 1-minute load when the script started.
        "load_average_1m": round(load[0], 2) if load else None,
    }
    info["summary"] = (
        f"{cpu}, {cores} CPUs, {info['memory_gib']} GiB, Python {info['python']}, "
        f"{platform.system()} {platform.release()}, pipes-bus {info['versions']['pipes-bus']} "
        f"@{info['git_commit']}{' (modified)' if info['git_pipes_bus_modified'] else ''}, "
        f"load {info['load_average_1m']}"
    )
    return info
