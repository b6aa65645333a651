"""Run the whole benchmark suite: every ``bench_*.py`` here, one after another.

Options (--quick, --strict, --out) are passed on to each script. Each prints its table
and writes its JSON, Markdown and PNG results into benchmarks/results/; this script then
prints one line per script and exits 1 if any of them did. A full run (not --quick, not
--only) then writes the documentation pages from the results: docs/benchmarks.md and
docs/comparison.md, with the plots copied into docs/img/benchmarks/ (make_docs.py).

    python benchmarks/run_all.py            # full sizes (about 15 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # CI smoke run (each script < 30 s, ~2 min)
    python benchmarks/run_all.py --only s3,soak
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    p.add_argument("--strict", action="store_true", help="a missed target fails the run too")
    p.add_argument("--out", metavar="DIR", help="results directory (default: benchmarks/results)")
    p.add_argument(
        "--only", metavar="NAMES", help="comma-separated script names without bench_ (e.g. log,e2e)"
    )
    p.add_argument(
        "--no-docs",
        dest="docs",
        action="store_false",
        help="do not rewrite docs/benchmarks.md and docs/comparison.md after a full run",
    )
    args = p.parse_args()
    passed = [f for f in ("--quick", "--strict") if getattr(args, f[2:])]
    if args.out:
        passed += ["--out", args.out]
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = set(args.only.split(","))
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    outcomes = []
    suite_started = time.perf_counter()
    for script in scripts:
        print(f"=== {script.name} {' '.join(passed)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *passed])
        outcomes.append((script.name, code, time.perf_counter() - started))
        print(flush=True)
    if args.docs and not args.quick and not args.only:
        print("=== make_docs.py", flush=True)
        docs = [sys.executable, str(HERE / "make_docs.py")]
        if args.out:
            docs += ["--results", args.out]
        outcomes.append(("make_docs.py", subprocess.call(docs), 0.0))
    print("=== suite")
    for name, code, seconds in outcomes:
        print(f"{name:20} {'ok' if code == 0 else f'FAILED (exit {code})':16} {seconds:6.1f} s")
    print(f"{'total':20} {'':16} {time.perf_counter() - suite_started:6.1f} s")
    return 1 if any(code for _, code, _ in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
