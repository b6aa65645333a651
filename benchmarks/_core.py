"""The suite's core: rows, goals, the scenario type, results files, tables and plot helpers.

A scenario is a generator function ``fn(ctx: Context)`` that yields one :class:`Row` per
measurement (what ran, what was measured, the correctness problems found, the goals it is
held to). It may yield :data:`RUN_OTHERS` once: the suite then runs the scenarios after it
and resumes it at the end (for idle sessions that must sit for minutes). ``scenarios/``
lists every scenario in its ``SCENARIOS`` table; ``run_all.py`` runs them and
``make_docs.py`` renders their tables from the JSON results.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"  # full runs: <scenario>.json, committed
DOCS = ROOT / "docs"
FRAGMENTS = DOCS / "benchmarks"  # generated tables, included by the pages (mkdocs snippets)
PLOTS = DOCS / "img" / "benchmarks"  # full runs' plots, committed once, shown by the pages
MiB = 1 << 20
DASH = "\u2013"

Table = tuple[list[str], list[list[str]]]  # headers, cells


@dataclass(frozen=True)
class Target:
    """A goal of the project, held against one metric of a row: ``metric op limit``.

    ``goal`` states it for a user; ``shown`` formats the measured value (``str.format``
    over the row's metrics, the metric itself as ``value``). ``full_only`` goals are
    stated for the full size (1M messages, 1 GB): a --quick run shows them as n/a.
    """

    metric: str
    op: str  # "<=" or ">="
    limit: float
    goal: str
    shown: str = "{value:,.2f}"
    full_only: bool = False

    def judge(self, metrics: Mapping[str, Any], quick: bool) -> str:
        """PASS, FAIL or n/a."""
        if self.full_only and quick:
            return "n/a"
        value = metrics.get(self.metric)
        if value is None:
            return "FAIL"
        return (
            "PASS" if (value <= self.limit if self.op == "<=" else value >= self.limit) else "FAIL"
        )

    def measured(self, metrics: Mapping[str, Any]) -> str:
        value = metrics.get(self.metric)
        return DASH if value is None else self.shown.format_map({**metrics, "value": value})


@dataclass
class Row:
    """One measurement: a label for people, what ran, what was measured, what went wrong."""

    label: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # correctness: any makes the run fail
    targets: list[Target] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)  # raw data for plots
    quick: bool = False  # measured at --quick sizes: goals stated for the full size are n/a

    def verdicts(self) -> list[str]:
        return [t.judge(self.metrics, self.quick) for t in self.targets]

    def status(self) -> str:
        """FAIL on a problem or a missed goal, PASS if every judged goal was met, else -."""
        verdicts = self.verdicts()
        if self.problems or "FAIL" in verdicts:
            return "FAIL"
        return "PASS" if "PASS" in verdicts else DASH

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        pairs = zip(self.targets, self.verdicts(), strict=True)
        data["targets"] = [{**asdict(t), "status": v} for t, v in pairs]
        return {**data, "status": self.status()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Row:
        targets = [Target(**{k: v for k, v in t.items() if k != "status"}) for t in data["targets"]]
        fields = ("label", "params", "metrics", "problems", "series", "quick")
        return cls(**{k: data[k] for k in fields if k in data}, targets=targets)


def pick(rows: Sequence[Row], **params: Any) -> list[Row]:
    """The rows whose params include ``params``."""
    return [r for r in rows if all(r.params.get(k) == v for k, v in params.items())]


def one(rows: Sequence[Row], **params: Any) -> Row | None:
    found = pick(rows, **params)
    return found[0] if found else None


RUN_OTHERS = "run the other scenarios, then resume me"


@dataclass
class Context:
    """What a scenario gets: the mode, a scratch directory, and its settings."""

    scenario: str
    quick: bool
    tmp: Path
    overrides: Mapping[str, str] = field(default_factory=dict)

    def opt(self, name: str, full: Any, quick: Any = None) -> Any:
        """Setting ``name``: ``full``, or ``quick`` in --quick runs, unless the command line
        gave ``--set <scenario>.<name>=VALUE`` (lists comma-separated)."""
        text = self.overrides.get(f"{self.scenario}.{name}")
        if text is None:
            return quick if self.quick and quick is not None else full
        if isinstance(full, list):
            kind = type(full[0]) if full else str
            return [kind(part) for part in text.split(",") if part]
        if isinstance(full, bool):
            return text.lower() in ("1", "true", "yes", "on")
        return type(full)(text) if full is not None else text


@dataclass(frozen=True)
class Scenario:
    """One row of the registry: the scenario function and how to show its rows.

    ``tables(rows)`` returns named tables (``""`` is the main one); ``plot(rows, results,
    path)`` draws PNGs (``path(name)`` says where one goes); ``compare(results)`` returns
    rows of the Dagster Pipes comparison [case, Dagster Pipes, pipes_bus]; ``needs``
    lists modules without which the scenario is skipped.
    """

    name: str
    run: Callable[[Context], Iterator[Any]]
    tables: Callable[[list[Row]], dict[str, Table]]
    plot: Callable[[list[Row], Results, Callable[[str], Path]], None] | None = None
    compare: Callable[[Results], list[list[str]]] | None = None
    needs: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return (self.run.__doc__ or self.name).strip().splitlines()[0]


class Results:
    """Rows of every scenario: this run's, else the last saved run's (``<name>.json``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fresh: dict[str, dict[str, Any]] = {}

    def meta(self, name: str) -> dict[str, Any] | None:
        if name not in self.fresh:
            path = self.folder / f"{name}.json"
            if not path.exists():
                return None
            self.fresh[name] = json.loads(path.read_text())
        return self.fresh[name]

    def rows(self, name: str) -> list[Row]:
        meta = self.meta(name)
        return [Row.from_json(r) for r in meta["rows"]] if meta else []

    def save(
        self, name: str, title: str, rows: list[Row], quick: bool, run: dict[str, Any]
    ) -> None:
        """Write ``<name>.json``; ``run`` holds the seconds and the load when it started."""
        self.fresh[name] = data = {
            "scenario": name,
            "title": title,
            "quick": quick,
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "seconds": round(run["seconds"], 1),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "machine": {**machine(), "load_average_1m": run["load"]},
            "rows": [r.to_json() for r in rows],
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")


# --- tables ----------------------------------------------------------------------------------


def markdown(table: Table) -> str:
    headers, cells = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def text(table: Table) -> str:
    headers, cells = table
    cells = [[c.replace("<br>", " ").replace("**", "") for c in row] for row in cells]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


def verdict(row: Row | None) -> str:
    """The row's goals with their verdicts, for a table cell (a missed one in bold)."""
    if row is None or not row.targets:
        return DASH
    marks = [v if v != "FAIL" else "**FAIL**" for v in row.verdicts()]
    return ", ".join(dict.fromkeys(marks))


def num(value: Any, digits: int = 0) -> str:
    """A number with thousands separators; yes/no for a bool; a dash for nothing."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def ms(value: float | None) -> str:
    """Milliseconds, as seconds from 1,000 on."""
    if value is None:
        return DASH
    if value >= 1000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.0f} ms" if value >= 20 else f"{value:,.1f} ms"


def size(nbytes: int) -> str:
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes >> shift} {unit}"
    return f"{nbytes} B"


def kinds(by_kind: Mapping[str, float] | None, digits: int = 0) -> str:
    """``get 30, list 20, put 30``: requests by kind."""
    return ", ".join(f"{k} {v:,.{digits}f}" for k, v in (by_kind or {}).items() if v) or DASH


def runs(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def median_run(runs: Sequence[Any], key: Callable[[Any], float]) -> Any:
    return sorted(runs, key=key)[len(runs) // 2]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation."""
    if not values:
        return None
    pos = q * (len(values) - 1)
    low = int(pos)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (pos - low)


# --- plots -----------------------------------------------------------------------------------


def figure(
    title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (8, 4.5), cols: int = 1
) -> Any:
    """A matplotlib figure and its axes (a list of them if ``cols`` > 1), on Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=size, squeeze=False)
    for ax in axes[0]:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if cols == 1:
        axes[0][0].set_title(title)
        return fig, axes[0][0]
    fig.suptitle(title)
    return fig, list(axes[0])


def thousands(axis: Any) -> None:
    """Label an axis 250k, 500k, ... instead of 250000."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e3:,.0f}k" if v else "0"))


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cdf_lines(ax: Any, rows: Sequence[Row], label: Callable[[Row], str]) -> None:
    """One latency CDF line per row (``series["latency_cdf"]``), log x axis."""
    for row in rows:
        points = row.series.get("latency_cdf") or []
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], label=label(row))
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)


# --- the machine -----------------------------------------------------------------------------


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(prefix)), None)
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


_MACHINE: dict[str, Any] = {}
PACKAGES = ("pipes-bus", "msgspec", "fsspec", "s3fs", "gcsfs", "adlfs", "moto")
PACKAGES += ("dagster", "dagster-pipes", "dagster-aws")


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU, memory, OS, versions, git state, load now."""
    from importlib.metadata import PackageNotFoundError, version

    if not _MACHINE:
        mem_kb = _first("/proc/meminfo", "MemTotal")
        versions = {}
        for dist in PACKAGES:
            try:
                versions[dist] = version(dist)
            except PackageNotFoundError:
                versions[dist] = None
        dirty = _git("status", "--porcelain", "--", "pipes_bus", "transports")
        _MACHINE.update(
            cpu=_first("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU",
            logical_cpus=os.cpu_count(),
            memory_gib=round(int(mem_kb.split()[0]) / MiB, 1) if mem_kb else None,
            os=platform.platform(),
            python=platform.python_version(),
            versions=versions,
            git_commit=_git("rev-parse", "--short", "HEAD"),
            git_pipes_bus_modified=bool(dirty) if dirty is not None else None,
        )
    return dict(_MACHINE)


def load_average() -> float | None:
    """The 1-minute load average now (other work on the machine skews timings)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
