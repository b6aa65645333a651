"""Launching the real ``pipes-bus`` CLI, and watching the memory of a process tree (Linux /proc)."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "workload.py"


def pipes_bus_cli() -> list[str]:
    """The installed ``pipes-bus`` console script of this interpreter.

    Taken from the interpreter's own scripts directory rather than PATH, so that a version
    manager's shim (pyenv adds ~0.1 s per start) does not show up in the timings.
    """
    script = Path(sysconfig.get_path("scripts")) / "pipes-bus"
    if script.exists():
        return [str(script)]
    found = shutil.which("pipes-bus")
    return [found] if found else [sys.executable, "-m", "pipes_bus"]


def workload(*args: str) -> list[str]:
    """The command that runs ``benchmarks/workload.py`` with ``args``."""
    return [sys.executable, str(WORKLOAD), *args]


def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces: the parent pid follows its ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    tree = _children_map()
    out: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(tree.get(child, []))
    return out


@dataclass
class ProcessWatch:
    """Samples a process and its descendants every ``interval`` seconds, in a thread.

    Records each process's peak RSS (the kernel's VmHWM, so peaks between samples count;
    only growth in a process's last ``interval`` before it exits can be missed) and a
    time series of the root's RSS and the largest descendant's RSS, in MiB.
    """

    pid: int
    interval: float = 0.05
    peaks_kb: dict[int, int] = field(default_factory=dict)
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # t, root, worker
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessWatch:
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            rss: dict[int, int] = {}
            for pid in [self.pid, *descendants(self.pid)]:
                hwm = _status_kb(pid, "VmHWM")
                now = _status_kb(pid, "VmRSS")
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
        """Peak RSS of the root process."""
        return self.peaks_kb.get(self.pid, 0) / 1024

    @property
    def descendant_peak_mib(self) -> float:
        """Largest peak RSS of any single descendant."""
        return max((kb for pid, kb in self.peaks_kb.items() if pid != self.pid), default=0) / 1024
