"""docs/examples/train.py: DDP on 2 CPU ranks under torchrun, through `pipes-bus run` on the
subprocess and slurm launchers, and a cancel that stops torchrun's whole process tree."""

from __future__ import annotations

import importlib.util
import json
import math
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import cli
from tests.launchers.end_to_end import Case, by_kind, mine, need, new_session, read_events, wait_for

TRAIN = Path(__file__).resolve().parents[2] / "docs" / "examples" / "train.py"
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))  # not a PATH shim: the same Python
STEPS, EVERY = 60, 20
REPORTED = [1, 20, 40, 60]  # the steps each rank reports: the first, every EVERY, the last


@pytest.fixture(autouse=True, scope="module")
def torch_installed() -> None:
    """Skip the module (fail, under .ci/run) without torch."""
    need("torch")


@pytest.fixture(scope="module")
def slurm() -> Iterator[Any]:
    """A one-node Slurm cluster for the module."""
    need("slurm")
    from pipes_bus.testing.platforms import start_slurm

    platform = start_slurm()
    try:
        yield platform
    finally:
        platform.stop()


def torchrun(out: Path, steps: int = STEPS) -> list[str]:
    """The command: torchrun with 2 ranks on this machine, training for ``steps``."""
    return [
        TORCHRUN,
        "--standalone",
        "--nproc-per-node",
        "2",
        str(TRAIN),
        "--steps",
        str(steps),
        "--every",
        str(EVERY),
        "--out",
        str(out),
    ]


def train_module() -> ModuleType:
    """docs/examples/train.py as a module (for its digest of a state dict)."""
    spec = importlib.util.spec_from_file_location("docs_example_train", TRAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def complete_events(path: Path) -> list[dict[str, Any]]:
    """The events written so far, without a last line still being written."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def ranks(events: list[dict[str, Any]]) -> dict[int, str]:
    """rank -> writer id, from the writers' labels ("rank 0", "rank 1")."""
    labels = {e["writer"]: e["info"]["label"] for e in by_kind(events, "opened")}
    assert sorted(labels.values()) == ["rank 0", "rank 1"], labels
    return {int(label.split()[1]): writer for writer, label in labels.items()}


def check_training(events: list[dict[str, Any]], checkpoint: Path) -> None:
    """What a finished run reported: 2 ranks, their losses and their checkpoint entries."""
    import torch

    writers = ranks(events)
    assert {e["writer"] for e in events} == set(writers.values())
    for rank, writer in writers.items():
        own = [e for e in events if e["writer"] == writer]
        custom = [e["payload"] for e in by_kind(own, "custom")]
        assert [(p["rank"], p["step"]) for p in custom] == [(rank, s) for s in REPORTED]
        losses = [p["loss"] for p in custom]
        assert all(math.isfinite(loss) for loss in losses), losses
        assert losses[-1] < losses[0], losses
        progress = [(e["current"], e["total"], e["unit"]) for e in by_kind(own, "progress")]
        assert progress == [(s, STEPS, "steps") for s in REPORTED]
        closed = by_kind(own, "closed")
        assert len(closed) == 1 and "exception" not in closed[0], closed

    saved = torch.load(checkpoint, weights_only=True)
    assert saved["steps"] == STEPS
    replica = train_module().digest(saved["model"])
    materialized = by_kind(events, "materialization")
    assert len(materialized) == 2
    by_rank = {m["metadata"]["rank"]["value"]: m for m in materialized}
    assert {rank: by_rank[rank]["writer"] for rank in by_rank} == writers
    for rank, m in by_rank.items():
        assert m["asset_key"] == "examples/train/model"
        meta = {k: v["value"] for k, v in m["metadata"].items()}
        assert meta == {
            "path": str(checkpoint),
            "bytes": checkpoint.stat().st_size,
            "loss": saved["loss"],
            "steps": STEPS,
            "rank": rank,
            "wrote": rank == 0,
            "params_sha256": replica,
        }


def test_torchrun_under_pipes_bus_run(tmp_path: Path) -> None:
    """2 ranks, 2 writers: each rank's losses once, in step order, falling; 2 checkpoint entries."""
    case = Case("subprocess", {}, {}, str(tmp_path / "bus"))
    out, checkpoints = tmp_path / "events.jsonl", tmp_path / "checkpoints"
    proc = case.run(*torchrun(checkpoints), events=out, timeout=180)
    assert proc.returncode == 0, proc.stderr
    check_training(read_events(out), checkpoints / "model.pt")


def test_torchrun_on_slurm(slurm: Any, tmp_path: Path) -> None:
    """The same run as a Slurm job: the same reports, and the job is over at the end."""
    case = Case("slurm", {"partition": "debug"}, slurm.env, str(tmp_path / "bus"))
    out, checkpoints = tmp_path / "events.jsonl", tmp_path / "checkpoints"
    session, args = new_session()
    proc = case.run(*torchrun(checkpoints), events=out, more=args, timeout=180)
    assert proc.returncode == 0, proc.stderr
    check_training(mine(read_events(out)), checkpoints / "model.pt")
    assert case.finished(case.handle(session))


def test_a_cancel_stops_every_rank_and_torchrun(tmp_path: Path) -> None:
    """`pipes-bus cancel` mid-training: exit 7, both ranks close with Cancelled, no process left."""
    case = Case("subprocess", {}, {}, str(tmp_path / "bus"))
    out, checkpoints = tmp_path / "events.jsonl", tmp_path / "checkpoints"
    session, args = new_session()
    run = case.popen(*torchrun(checkpoints, steps=10**9), events=out, more=args)
    try:
        wait_for(lambda: by_kind(complete_events(out), "progress"))
        # Every process of the run names the checkpoint folder: pipes-bus, torchrun, 2 ranks.
        started = pids(str(checkpoints))
        rank_pids = {e["info"]["pid"] for e in by_kind(complete_events(out), "opened")}
        assert len(started) == 4 and {run.pid, *rank_pids} <= started, (started, rank_pids)
        done = cli("cancel", session, "--bus", case.bus, "--reason", "test", env=case.env)
        assert done.returncode == 0, done.stderr
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGKILL)
            run.wait()
    assert run.returncode == 7, stderr
    closed = [e["exception"] for e in by_kind(read_events(out), "closed")]
    assert [e["type"].rsplit(".", 1)[-1] for e in closed] == ["Cancelled", "Cancelled"], closed
    assert closed[0]["message"] == closed[1]["message"]
    assert closed[0]["message"].endswith(": test")
    assert pids(str(checkpoints)) == set()
    assert not [pid for pid in started if running(pid)]
    assert not (checkpoints / "model.pt").exists()


def pids(pattern: str) -> set[int]:
    """The processes whose command line holds ``pattern`` (pgrep -f; zombies have none)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
