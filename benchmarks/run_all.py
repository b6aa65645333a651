"""Run the benchmark suite: every scenario in scenarios/__init__.py, or the --only ones.

Each scenario prints its tables and writes ``results/<name>.json`` (every measurement,
the machine, the date, the git commit). A full run writes its plots into
``docs/img/benchmarks/`` and renders the pages' tables (make_docs.py); --quick shrinks
every size and writes into ``results/quick/`` (git-ignored), so a smoke run never
overwrites full results.

    python benchmarks/run_all.py                  # everything, full size (~15 min, 2 cores)
    python benchmarks/run_all.py --quick          # CI smoke run (< 3 min)
    python benchmarks/run_all.py --only trickle,idle --set trickle.seconds=5
    python benchmarks/run_all.py --list           # the scenarios and what each measures

The exit status is 1 when a run found a correctness problem in pipes_bus (a message lost,
duplicated, out of order or unexpected, a stream fault, a command that failed) or a
scenario crashed; with --strict, a missed goal fails the run too. Timings are reported,
never asserted; what the reference (Dagster Pipes) loses is a finding, not a failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _core import PLOTS, RESULTS, RUN_OTHERS, Context, Results, Row, Scenario, load_average, text
from scenarios import SCENARIOS


class Run:
    """One scenario's progress: its rows so far and the time it spent running."""

    def __init__(self, scenario: Scenario, ctx: Context, results: Results, plots: Path) -> None:
        self.scenario, self.ctx, self.results, self.plots = scenario, ctx, results, plots
        self.rows: list[Row] = []
        self.seconds = 0.0
        self.load = load_average()  # when it started
        self.steps = scenario.run(ctx)

    def advance(self) -> bool:
        """Run until the scenario yields RUN_OTHERS (True) or ends (False, then report)."""
        print(f"=== {self.scenario.name}: {self.scenario.title}", flush=True)
        started = time.perf_counter()
        try:
            for item in self.steps:
                if item is RUN_OTHERS:
                    self.seconds += time.perf_counter() - started
                    print("  ... going on in the background while the others run", flush=True)
                    return True
                item.quick = self.ctx.quick
                self.rows.append(item)
                print(f"  {item.label}: {item.status()}", flush=True)
        except Exception as exc:
            traceback.print_exc()
            self.rows.append(
                Row("the scenario crashed", {}, problems=[f"{type(exc).__name__}: {exc}"])
            )
        self.seconds += time.perf_counter() - started
        self.report()
        return False

    def report(self) -> None:
        sc, quick = self.scenario, self.ctx.quick
        self.results.save(
            sc.name, sc.title, self.rows, quick, {"seconds": self.seconds, "load": self.load}
        )
        good = [r for r in self.rows if r.params]
        if sc.plot and good:
            try:
                sc.plot(good, self.results, lambda name: self.plots / name)
            except Exception:
                traceback.print_exc()
                print(f"  (the plots of {sc.name} failed; the results are saved)")
        try:
            tables = sc.tables(good) if good else {}
        except Exception:
            traceback.print_exc()
            tables = {}
        for name, table in tables.items():
            print(f"\n{sc.title}{f' ({name})' if name else ''}{'  [--quick]' if quick else ''}")
            print(text(table))
        for row in self.rows:
            for problem in row.problems:
                print(f"  PROBLEM in {row.label}: {problem}")
        print(f"({self.seconds:.1f} s)\n", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    p.add_argument("--strict", action="store_true", help="a missed goal fails the run too")
    p.add_argument("--only", metavar="NAMES", help="comma-separated scenario names (see --list)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SCENARIO.NAME=VALUE",
        help="change a setting of a scenario (see its ctx.opt calls)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="results directory (default: benchmarks/results, --quick: results/quick)",
    )
    p.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not render the pages' tables after a full run",
    )
    p.add_argument("--list", action="store_true", help="list the scenarios and what each measures")
    args = p.parse_args()
    # On SIGTERM, unwind: the local servers stop and the idle sessions end (atexit, finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:18} {sc.title}")
        return 0
    chosen = SCENARIOS
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {sc.name for sc in SCENARIOS}
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))} (see --list)")
        chosen = [sc for sc in SCENARIOS if sc.name in names]
    overrides = dict(item.split("=", 1) for item in args.set)
    out = Path(args.out) if args.out else RESULTS / "quick" if args.quick else RESULTS
    results = Results(out)
    plots = PLOTS if out.resolve() == RESULTS.resolve() else out
    started = time.perf_counter()
    done: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="pipes-bus-bench-") as tmp:
        background = []
        for sc in chosen:
            missing = [m for m in sc.needs if importlib.util.find_spec(m) is None]
            if missing:
                print(f"=== {sc.name}: skipped, needs {', '.join(missing)} (the bench extra)\n")
                continue
            run = Run(sc, Context(sc.name, args.quick, Path(tmp), overrides), results, plots)
            (background if run.advance() else done).append(run)
        for run in background:
            run.advance()
            done.append(run)
    if args.docs and not args.quick and out.resolve() == RESULTS.resolve():
        import make_docs

        print(f"rendered {len(make_docs.render(results))} table fragments into docs/benchmarks/")
    return summary(done, args.quick, args.strict, time.perf_counter() - started)


def summary(done: list[Run], quick: bool, strict: bool, seconds: float) -> int:
    """Every goal with its verdict, the problems, each scenario's time; the exit status."""
    goals, problems, missed = [], 0, False
    for run in done:
        problems += sum(len(r.problems) for r in run.rows)
        for row in run.rows:
            for target, status in zip(row.targets, row.verdicts(), strict=True):
                goals.append([status, target.measured(row.metrics), row.label, target.goal])
                missed |= status == "FAIL"
    print("=== goals")
    print(text((["verdict", "measured", "case", "goal"], goals)))
    print("\n=== scenarios")
    for run in done:
        status = "problems" if any(r.problems for r in run.rows) else "ok"
        print(f"{run.scenario.name:18} {status:9} {run.seconds:7.1f} s")
    print(f"{'total':28} {seconds:7.1f} s")
    print(
        f"{problems} correctness problems; " + ("a goal was missed" if missed else "no goal missed")
    )
    return 1 if problems or (strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
