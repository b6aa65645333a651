"""Launching the real ``pipes-bus`` CLI on workload.py, timing it and watching its memory.

:func:`run_cli` runs ``pipes-bus run --bus STORE [OPTIONS] -- python workload.py ARGS``
as a user would, sampling the RSS of the process tree from /proc; :func:`checked` runs it
``repeat`` times with ``--events FILE`` and checks every run's events (_checks.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from _checks import check_file
from _core import median_run
from _stores import Store

HERE = Path(__file__).resolve().parent


def pipes_bus_cli() -> list[str]:
    """The installed ``pipes-bus`` script of this interpreter (not a version manager's shim
    on PATH, which adds ~0.1 s per start)."""
    script = Path(sysconfig.get_path("scripts")) / "pipes-bus"
    if script.exists():
        return [str(script)]
    found = shutil.which("pipes-bus")
    return [found] if found else [sys.executable, "-m", "pipes_bus"]


def workload(*args: str) -> list[str]:
    """The command that runs ``benchmarks/workload.py ARGS``."""
    return [sys.executable, str(HERE / "workload.py"), *args]


def _status_kb(pid: int, name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith(name)), None)
    except (OSError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    tree: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name (field 2) may hold spaces: the parent pid follows ")".
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(tree.get(pid, []))
    while todo:
        out.append(child := todo.pop())
        todo.extend(tree.get(child, []))
    return out


@dataclass
class ProcessWatch:
    """Samples a process and its descendants every ``interval`` s in a thread: each one's
    peak RSS (the kernel's VmHWM, so peaks between samples count) and a time series of the
    root's RSS and the largest descendant's, in MiB."""

    pid: int
    interval: float = 0.05
    peaks_kb: dict[int, int] = field(default_factory=dict)
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # t, root, worker
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> ProcessWatch:
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            rss: dict[int, int] = {}
            for pid in [self.pid, *descendants(self.pid)]:
                hwm, now = _status_kb(pid, "VmHWM"), _status_kb(pid, "VmRSS")
                if hwm is not None:
                    self.peaks_kb[pid] = max(hwm, self.peaks_kb.get(pid, 0))
                if now is not None:
                    rss[pid] = now
            root = rss.pop(self.pid, 0)
            worker = max(rss.values(), default=0)
            self.samples.append((time.perf_counter() - t0, root / 1024, worker / 1024))
            self._stop.wait(self.interval)

    @property
    def root_peak_mib(self) -> float:
        return self.peaks_kb.get(self.pid, 0) / 1024

    @property
    def descendant_peak_mib(self) -> float:
        """The largest peak RSS of any one descendant."""
        return max((v for k, v in self.peaks_kb.items() if k != self.pid), default=0) / 1024


_SUMMARY = re.compile(r"(\d+) messages \((\d+) custom.*?(\d+) store requests")


@dataclass
class CliRun:
    """One ``pipes-bus`` command: its exit, wall time, stderr and the memory of its processes."""

    exit_code: int
    wall_s: float
    stderr: str
    orchestrator_peak_mib: float
    worker_peak_sampled_mib: float
    worker: dict[str, Any]  # the workload's own --report
    rss: list[tuple[float, float, float]]

    def problems(self, custom: int | None = None) -> list[str]:
        """The exit status and, with ``custom``, the CLI summary's count, as problems."""
        out = []
        if self.exit_code:
            last = self.stderr.strip().splitlines()[-1:] or ["(no output)"]
            out.append(f"the pipes-bus command exited {self.exit_code}: {last[0]}")
        got = self.summary().get("cli_custom")
        if custom is not None and got != custom:
            out.append(f"the CLI reported {got} custom messages, expected {custom:,}")
        return out

    def summary(self) -> dict[str, int]:
        """The CLI's closing line: messages, custom messages, the orchestrator's requests."""
        found = _SUMMARY.search(self.stderr)
        if not found:
            return {}
        keys = ("cli_messages", "cli_custom", "orchestrator_requests")
        return dict(zip(keys, map(int, found.groups()), strict=True))


def run_command(
    argv: list[str],
    tmp: Path,
    env: Mapping[str, str],
    *,
    on_line: Callable[[bytes, float], None] | None = None,
    report: Path | None = None,
    watch_interval: float = 0.05,
) -> CliRun:
    """Run ``argv``, watching its memory; ``on_line`` gets each stdout line as it arrives."""
    with open(tmp / f"stderr-{threading.get_ident()}.txt", "w+b") as err:
        started = time.perf_counter()
        out = subprocess.PIPE if on_line else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env={**os.environ, **env})
        with ProcessWatch(proc.pid, interval=watch_interval) as watch:
            for line in proc.stdout if on_line and proc.stdout else ():
                on_line(line, time.time())  # type: ignore[misc]
            code = proc.wait()
            wall = time.perf_counter() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    worker = msgspec.json.decode(report.read_bytes()) if report and report.exists() else {}
    peaks = (watch.root_peak_mib, watch.descendant_peak_mib)
    return CliRun(code, wall, stderr, *peaks, worker, watch.samples)


def run_cli(
    store: Store,
    workload_args: Sequence[str],
    tmp: Path,
    *,
    events: str | None = None,
    session: str | None = None,
    options: Sequence[str] = (),
    on_line: Callable[[bytes, float], None] | None = None,
    watch_interval: float = 0.05,
) -> CliRun:
    """``pipes-bus run [--events EVENTS] [OPTIONS] -- python workload.py WORKLOAD_ARGS``."""
    report = tmp / f"report-{threading.get_ident()}.json"
    report.unlink(missing_ok=True)  # never read an earlier run's report
    argv = [*pipes_bus_cli(), "run", "--bus", store.url, *store.storage_args(), *options]
    argv += ["--events", events] if events else []
    argv += ["--session-id", session] if session else []
    argv += ["--", *workload("--report", str(report), *workload_args)]
    return run_command(
        argv, tmp, store.env, on_line=on_line, report=report, watch_interval=watch_interval
    )


def replay_cli(store: Store, session: str, tmp: Path) -> CliRun:
    """``pipes-bus tail --events /dev/null`` on a finished session: reading it after the fact."""
    argv = [*pipes_bus_cli(), "tail", f"{store.url.rstrip('/')}/{session}", "--events", os.devnull]
    return run_command([*argv, *store.storage_args()], tmp, store.env)


def checked(
    store: Store,
    workload_args: Sequence[str],
    tmp: Path,
    writers: int,
    per_writer: int,
    repeat: int = 1,
    **options: Any,
) -> tuple[dict[str, Any], list[str]]:
    """Run a workload ``repeat`` times with ``--events FILE``, checking every run's events.

    Returns the metrics of the run with the median wall time (its event counts, every run's
    wall time, errors summed over the runs, the CLI summary, peak memory) and every run's
    problems.
    """
    done, problems = [], []
    for k in range(repeat):
        events = tmp / f"events-{threading.get_ident()}.jsonl"
        events.unlink(missing_ok=True)
        run = run_cli(store, workload_args, tmp, events=str(events), **options)
        counts, found = check_file(events, writers, per_writer)
        events.unlink(missing_ok=True)
        problems += [f"run {k + 1}: {p}" if repeat > 1 else p for p in run.problems() + found]
        done.append((run, counts))
    run, counts = median_run(done, key=lambda rc: rc[0].wall_s)
    metrics = {
        "wall_s": run.wall_s,
        "wall_s_all": [round(r.wall_s, 3) for r, _ in done],
        "msgs_per_s": writers * per_writer / run.wall_s,
        **counts,
        "errors": sum(c["errors"] for _, c in done),
        "delivered_all": [c["delivered"] for _, c in done],
        **run.summary(),
        "exit_code": run.exit_code,
        "orchestrator_peak_mib": run.orchestrator_peak_mib,
        "worker_peak_mib": run.worker.get("peak_rss_mib"),  # the workload process's own
        "largest_process_peak_mib": run.worker_peak_sampled_mib,  # any process below the CLI
        "worker_emit_s": run.worker.get("seconds"),
        **{k: v for k, v in run.worker.items() if k not in ("sent", "seconds", "peak_rss_mib")},
    }
    return metrics, problems
