"""Whole `pipes-bus run` sessions on each cloud store: a burst, a crash and a fan-in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

STORES = ["s3", "gcs", "azure"]


@pytest.fixture(params=STORES)
def bus(request: pytest.FixtureRequest) -> str:
    """A fresh bus URL on each store, with the store's usual environment set."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def run(
    bus: str, tmp_path: Path, body: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`pipes-bus run` a worker program; return the process and its events."""
    script = tmp_path / "worker.py"
    script.write_text(body)
    events = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipes_bus",
            "run",
            "-q",
            "--bus",
            bus,
            "--events",
            str(events),
            *args,
            "--",
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    lines = [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []
    return proc, lines


class TestSessions:
    def test_a_burst_arrives_exactly_once_in_order(self, bus: str, tmp_path: Path) -> None:
        """20,000 messages from one worker arrive once each, in order, exit 0."""
        proc, lines = run(
            bus,
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    for i in range(20000): w.report_custom_message(i)\n",
        )
        assert proc.returncode == 0, proc.stderr
        assert [x["seq"] for x in lines] == list(range(20002))
        assert [x["payload"] for x in lines if x["kind"] == "custom"] == list(range(20000))

    def test_a_crash_delivers_what_was_flushed_and_names_the_writer(
        self, bus: str, tmp_path: Path
    ) -> None:
        """A worker killed after a flush: its messages arrive, the run exits 137 with a reason."""
        proc, lines = run(
            bus,
            tmp_path,
            "import os, signal, pipes_bus\nwith pipes_bus.open_worker(label='doomed') as w:\n"
            "    for i in range(500): w.report_custom_message(i)\n"
            "    w.flush(); os.kill(os.getpid(), signal.SIGKILL)\n",
        )
        assert proc.returncode == 128 + 9
        assert [x["payload"] for x in lines if x["kind"] == "custom"] == list(range(500))
        assert (
            "writer doomed" in proc.stderr
            and "never closed; its last delivered message was #500" in proc.stderr
        )

    def test_a_fan_in_of_processes_shares_one_session(self, bus: str, tmp_path: Path) -> None:
        """Eight processes x 1,000 messages: eight streams, each complete and in order."""
        proc, lines = run(
            bus,
            tmp_path,
            "import subprocess, sys, pipes_bus\n"
            "code = 'import sys, pipes_bus\\nr = int(sys.argv[1])\\n"
            'with pipes_bus.open_worker(label=f"rank {r}") as w:\\n'
            "    [w.report_custom_message([r, i]) for i in range(1000)]'\n"
            "procs = [subprocess.Popen([sys.executable, '-c', code, str(r)]) for r in range(8)]\n"
            "sys.exit(max(p.wait() for p in procs))\n",
        )
        assert proc.returncode == 0, proc.stderr
        by_writer: dict[str, list[dict[str, Any]]] = {}
        for line in lines:
            by_writer.setdefault(line["writer"], []).append(line)
        assert len(by_writer) == 8
        ranks = set()
        for stream in by_writer.values():
            assert [x["seq"] for x in stream] == list(range(1002))
            customs = [x["payload"] for x in stream if x["kind"] == "custom"]
            rank = customs[0][0]
            ranks.add(rank)
            assert customs == [[rank, i] for i in range(1000)]
        assert ranks == set(range(8))


class TestMissingLocation:
    @pytest.mark.parametrize(
        ("store", "url"),
        [
            ("s3", "s3://no-such-bucket-here/bus"),
            ("gcs", "gs://no-such-bucket-here/bus"),
            ("azure", "az://no-such-container/bus"),
        ],
    )
    def test_a_missing_bucket_fails_fast_naming_the_url(
        self, store: str, url: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """`run` on a bucket that does not exist exits 6 before launching, naming the URL."""
        request.getfixturevalue(f"{store}_env")
        marker = tmp_path / "launched"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipes_bus",
                "run",
                "--bus",
                url,
                "--",
                sys.executable,
                "-c",
                f"open({str(marker)!r}, 'w')",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 6, proc.stderr
        assert url.split("//")[1].split("/")[0] in proc.stderr
        assert not marker.exists()


class TestBusFailure:
    def test_the_commands_status_wins_and_the_reason_names_both(
        self, tmp_path: Path, s3_env: dict[str, str], moto_server: Any
    ) -> None:
        """The bucket vanishes mid-run and the command then exits 3: run exits 3 (the
        command's status), and its reason names the command and the bus failure."""
        import uuid

        import s3fs

        bucket = f"doomed-{uuid.uuid4().hex[:10]}"
        fs = s3fs.S3FileSystem(endpoint_url=moto_server.url, skip_instance_cache=True)
        fs.call_s3("create_bucket", Bucket=bucket)
        started, go_on = tmp_path / "started", tmp_path / "go-on"
        script = tmp_path / "worker.py"
        script.write_text(
            "import os, pathlib, sys, time, pipes_bus\n"
            "with pipes_bus.open_worker() as w:\n"
            "    w.report_custom_message(1); w.flush()\n"
            f"    pathlib.Path({str(started)!r}).write_text('x')\n"
            f"    while not pathlib.Path({str(go_on)!r}).exists(): time.sleep(0.02)\n"
            "    os._exit(3)\n"
        )
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipes_bus",
                "run",
                "-q",
                "--bus",
                f"s3://{bucket}/bus",
                "--",
                sys.executable,
                str(script),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        fs.rm(bucket, recursive=True)
        go_on.write_text("x")
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 3, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("pipes-bus: the command exited with status 3 (and ")
        assert "the bus could not be read to the end: " in stderr
        assert f"the bucket '{bucket}' does not exist" in stderr
