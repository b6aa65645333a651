"""The worked examples in docs/examples run end to end through pipes_bus and report exactly."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pipes_bus.messages import Check, Materialization

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"


def _environment() -> dict[str, str]:
    """This process's environment, minus anything that would tie a run to another session."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIPES_BUS_")}


def _cli(script: str, tmp_path: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipes_bus",
        "run",
        "-q",
        "--bus",
        str(tmp_path / "bus"),
        "--events",
        str(tmp_path / "events.jsonl"),
        *options,
        "--",
        sys.executable,
        str(EXAMPLES / script),
    ]


def run_cli(script: str, tmp_path: Path, *options: str) -> tuple[int, list[dict[str, Any]]]:
    """`pipes-bus run --events FILE -- python docs/examples/SCRIPT`: (exit status, events)."""
    done = subprocess.run(
        _cli(script, tmp_path, *options),
        cwd=ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 or done.stderr, "a non-zero status comes with a reason"
    return done.returncode, _events(tmp_path)


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kinds(events: list[dict[str, Any]]) -> dict[str, int]:
    return dict(collections.Counter(e["kind"] for e in events))


def _assert_streams_complete(events: list[dict[str, Any]]) -> None:
    """Per writer: seq runs 0..n-1, opened first, closed last and clean."""
    by_writer: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for event in events:
        by_writer[event["writer"]].append(event)
    for writer, stream in by_writer.items():
        assert [e["seq"] for e in stream] == list(range(len(stream))), writer
        assert stream[0]["kind"] == "opened"
        assert stream[-1]["kind"] == "closed"
        assert stream[-1]["count"] == len(stream) - 1
        assert "exception" not in stream[-1]


class TestHello:
    def test_hello_reports_sixteen_messages_and_exits_0(self, tmp_path: Path) -> None:
        """The README's first worker sends 16 messages from one writer and succeeds."""
        status, events = run_cli("hello.py", tmp_path)
        assert status == 0
        assert _kinds(events) == {
            "opened": 1,
            "log": 2,
            "progress": 5,
            "custom": 5,
            "materialization": 1,
            "check": 1,
            "closed": 1,
        }
        _assert_streams_complete(events)


class TestSubprocessExample:
    def test_run_subprocess_returns_the_workers_reports(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """run_subprocess.py gets one materialization, two checks and a log; status 0."""
        result = _load("run_subprocess").main(bus=str(tmp_path / "bus"))
        assert capsys.readouterr().out.splitlines() == [
            "materialized orders v1200: rows=1200",
            "check has_rows: passed (error)",
            "check under_limit: failed (warn)",
            "exit status 0: ok",
        ]
        assert result.exit_code == 0
        assert result.exit_status() == 0
        assert result.faults == []
        [writer] = result.writers.values()
        assert (writer.opened, writer.closed, writer.exception) == (True, True, None)
        assert writer.messages == 6
        [materialization] = [e.message for e in result.materializations]
        assert isinstance(materialization, Materialization)
        assert materialization.asset_key == "orders"
        assert materialization.metadata["partition"].value == "2024-06-01"  # type: ignore[attr-defined]
        checks = [e.message for e in result.checks]
        assert all(isinstance(c, Check) for c in checks)
        assert [(c.check_name, c.passed, c.severity) for c in checks] == [  # type: ignore[union-attr]
            ("has_rows", True, "error"),
            ("under_limit", False, "warn"),
        ]
        assert [e.message.message for e in result.logs] == [  # type: ignore[union-attr]
            "building orders for partition 2024-06-01"
        ]

    def test_follow_session_prints_both_phases_finishing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """follow_session.py sees each phase reach its total live; one writer; status 0."""
        result = _load("follow_session").main(bus=str(tmp_path / "bus"))
        assert capsys.readouterr().out.splitlines() == [
            "download finished: 10 files",
            "transform finished: 10000 rows",
            "1 writer(s); exit status 0",
        ]
        assert result.exit_status() == 0
        assert result.counts["progress"] == 20


class TestFanInExample:
    def test_every_task_is_its_own_writer_and_all_close(self, tmp_path: Path) -> None:
        """fan_in.py: 9 writers (main + part-0..7) open and close; 40 custom, 9 materializations."""
        status, events = run_cli("fan_in.py", tmp_path)
        assert status == 0
        assert _kinds(events) == {
            "opened": 9,
            "closed": 9,
            "custom": 40,
            "materialization": 9,
            "log": 2,
        }
        labels = sorted(e["info"]["label"] for e in events if e["kind"] == "opened")
        assert labels == sorted(["main", *(f"part-{n}" for n in range(8))])
        _assert_streams_complete(events)
        rows = {
            e["asset_key"]: e["metadata"]["rows"]["value"]
            for e in events
            if e["kind"] == "materialization"
        }
        assert rows == {"events": 2000, **{f"events/part-{n}": 250 for n in range(8)}}


class TestLongJobExample:
    def test_progress_arrives_in_order_up_to_each_total(self, tmp_path: Path) -> None:
        """long_job.py with 5 files: 5 download and 5 transform progress messages, in order."""
        context = json.dumps({"extras": {"files": 5, "delay": 0.01}})
        status, events = run_cli("long_job.py", tmp_path, "--context", context)
        assert status == 0
        assert _kinds(events) == {
            "opened": 1,
            "log": 2,
            "progress": 10,
            "materialization": 1,
            "closed": 1,
        }
        progress = [
            (e["label"], e["current"], e["total"], e["unit"])
            for e in events
            if e["kind"] == "progress"
        ]
        assert progress == [
            *(("download", float(n), 5.0, "files") for n in range(1, 6)),
            *(("transform", float(n * 1000), 5000.0, "rows") for n in range(1, 6)),
        ]
        _assert_streams_complete(events)

    def test_sigterm_closes_the_stream_with_worker_terminated(self, tmp_path: Path) -> None:
        """SIGTERM to `pipes-bus run` reaches the job and cancels the session; its stream
        closes with the signal; the run exits 7."""
        context = json.dumps({"extras": {"files": 10000, "delay": 0.01}})
        process = subprocess.Popen(
            _cli("long_job.py", tmp_path, "--context", context),
            cwd=ROOT,
            env=_environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not any(e["kind"] == "progress" for e in _events(tmp_path)):
                assert process.poll() is None, "the job ended before it was stopped"
                assert time.monotonic() < deadline, "no progress within 30 s"
                time.sleep(0.02)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 7, stderr
        assert b"the command was killed by SIGTERM" in stderr
        assert b"pipes-bus: the session was cancelled by " in stderr
        events = _events(tmp_path)
        closed = events[-1]
        assert closed["kind"] == "closed"
        assert closed["exception"]["type"].endswith("WorkerTerminated")
        assert closed["exception"]["message"] == "received SIGTERM"
        assert [e["seq"] for e in events] == list(range(len(events)))
