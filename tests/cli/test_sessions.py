"""`pipes-bus ls`, `cancel` and `gc`: the sessions on a bus, as their records say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipes_bus._orchestrator.lifecycle import parse_duration
from pipes_bus._wire.keys import result_key
from tests.cli.test_cli import HELLO
from tests.helpers import cli, cli_command, write_script

SLEEPER = """
import time, pipes_bus
with pipes_bus.open_worker() as w:
    w.log.info("waiting")
    time.sleep(600)
"""


def start_run(bus: Path, script: Path, *args: str) -> subprocess.Popen[str]:
    """`pipes-bus run` in the background, its stderr captured."""
    return subprocess.Popen(
        [*cli_command("run", "--bus", str(bus), *args, "--"), sys.executable, str(script)],
        stderr=subprocess.PIPE,
        text=True,
    )


def only_session(bus: Path) -> str:
    """The id of the one session on the bus, once its writer has opened."""
    deadline = time.monotonic() + 60
    while True:
        found = [p.name for p in bus.iterdir()] if bus.exists() else []
        if found and list((bus / found[0] / "streams").glob("*/*")):
            return found[0]
        assert time.monotonic() < deadline, "no session appeared"
        time.sleep(0.02)


class TestLs:
    def test_each_session_shows_its_state_age_writers_and_reason(self, tmp_path: Path) -> None:
        """A succeeded run and a failed one: one row each, oldest first, with the reason."""
        bus = tmp_path / "bus"
        assert cli("run", "-q", "--bus", str(bus), "--", sys.executable, str(HELLO)).returncode == 0
        failing = write_script(
            tmp_path, "import sys, pipes_bus\npipes_bus.open_worker().close()\nsys.exit(3)\n"
        )
        assert (
            cli("run", "-q", "--bus", str(bus), "--", sys.executable, str(failing)).returncode == 3
        )
        proc = cli("ls", str(bus))
        header, first, second = proc.stdout.splitlines()
        assert header.split() == ["SESSION", "STATE", "CREATED", "AGE", "WRITERS", "REASON"]
        assert first.split()[1] == "succeeded" and first.split()[5] == "1"
        assert second.split()[1] == "failed"
        assert second.endswith("the command exited with status 3")

    def test_json_rows_carry_the_records(self, tmp_path: Path) -> None:
        """--json: one object per session with its state, status, who made it, and its command."""
        bus = tmp_path / "bus"
        assert cli("run", "-q", "--bus", str(bus), "--", sys.executable, str(HELLO)).returncode == 0
        [row] = [json.loads(line) for line in cli("ls", "--json", str(bus)).stdout.splitlines()]
        assert (row["state"], row["status"], row["writers"]) == ("succeeded", 0, 1)
        assert "@" in row["by"] and " pid " in row["by"]
        assert row["command"].endswith("hello.py")
        assert 0 <= row["age"] < 600

    def test_a_folder_that_is_not_a_session_is_unknown(self, tmp_path: Path) -> None:
        """A stray folder with an id-like name is listed as unknown, not skipped or fatal;
        a session whose end record is garbage says so."""
        bus = tmp_path / "bus"
        assert cli("run", "-q", "--bus", str(bus), "--", sys.executable, str(HELLO)).returncode == 0
        [session] = [p.name for p in bus.iterdir()]
        (bus / result_key(session)).write_bytes(b"\x00garbage")
        (bus / "stray").mkdir()
        rows = {
            json.loads(x)["session"]: json.loads(x)
            for x in cli("ls", "--json", str(bus)).stdout.splitlines()
        }
        assert rows["stray"]["state"] == "unknown"
        assert rows[session]["state"] == "running"
        assert rows[session]["reason"].endswith("result.json is not a session end")


class TestCancel:
    def test_cancel_stops_a_run_from_another_terminal(self, tmp_path: Path) -> None:
        """`pipes-bus cancel` reaches the worker through the bus; the run exits 7 and says
        who cancelled it and why."""
        bus = tmp_path / "bus"
        run = start_run(bus, write_script(tmp_path, SLEEPER))
        session = only_session(bus)
        proc = cli("cancel", "--bus", str(bus), session, "--reason", "wrong data")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"session {session}: cancelled by ")
        assert "(cli): wrong data" in proc.stdout
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 7, stderr
        assert "pipes-bus: the session was cancelled by " in stderr
        assert "(cli): wrong data" in stderr
        again = cli("cancel", f"{bus}/{session}")
        assert again.returncode == 0
        assert again.stdout == f"session {session} already ended (cancelled); nothing to cancel\n"

    def test_a_signed_session_needs_its_key(self, tmp_path: Path) -> None:
        """Without $PIPES_BUS_KEY a signed session's cancel is refused (exit 2), saying why."""
        bus = tmp_path / "bus"
        run = start_run(bus, write_script(tmp_path, SLEEPER), "--sign")
        try:
            session = only_session(bus)
            proc = cli("cancel", "--bus", str(bus), session, env={"PIPES_BUS_KEY": ""})
            assert proc.returncode == 2
            assert f"Session {session} is signed" in proc.stderr
            assert len(proc.stderr.splitlines()) == 1
        finally:
            run.send_signal(signal.SIGINT)
            run.communicate(timeout=60)

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["s-nothing"], "There is no session at"),
            (["bad id!"], "is not a valid id"),
            (["s-x", "--bus", ""], "The bus URL is empty"),
        ],
    )
    def test_bad_input_exits_2_with_one_line(
        self, tmp_path: Path, args: list[str], message: str
    ) -> None:
        """A missing session, a bad id, an empty bus: one line, exit 2."""
        bus = tmp_path / "bus"
        bus.mkdir()
        if "--bus" not in args:
            args = [*args, "--bus", str(bus)]
        proc = cli("cancel", *args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.splitlines()) == 1


class TestGc:
    def test_nothing_is_younger_than_its_threshold(self, tmp_path: Path) -> None:
        """Fresh sessions are kept by --older-than 1h; the total says nothing was deleted."""
        bus = tmp_path / "bus"
        assert cli("run", "-q", "--bus", str(bus), "--", sys.executable, str(HELLO)).returncode == 0
        proc = cli("gc", str(bus), "--older-than", "1h")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"deleted 0 session(s) older than 1h on {bus}: 0 objects, 0 B\n"
        assert len(list(bus.iterdir())) == 1

    def test_force_deletes_a_running_session_too(self, tmp_path: Path) -> None:
        """--force includes sessions that have not ended, and leaves no folder behind."""
        bus = tmp_path / "bus"
        run = start_run(bus, write_script(tmp_path, SLEEPER))
        try:
            session = only_session(bus)
            kept = cli("gc", str(bus), "--older-than", "0s")
            assert "kept 1 unfinished session(s)" in kept.stderr and (bus / session).exists()
            forced = cli("gc", str(bus), "--older-than", "0s", "--force")
            assert forced.returncode == 0, forced.stderr
            assert forced.stdout.startswith(f"deleted {session}  running")
            assert not (bus / session).exists()
        finally:
            run.send_signal(signal.SIGINT)
            run.communicate(timeout=60)

    @pytest.mark.parametrize("text", ["", "7", "soon", "-1d", "1y", "nan"])
    def test_a_bad_duration_is_a_usage_error(self, tmp_path: Path, text: str) -> None:
        """Anything but a number with s/m/h/d/w is refused in one line (a bare 7 is 7 s)."""
        if text == "7":
            assert parse_duration(text) == 7.0
            return
        proc = cli("gc", str(tmp_path), f"--older-than={text}")
        assert proc.returncode == 2
        assert "is not a duration" in proc.stderr and len(proc.stderr.splitlines()) == 1

    def test_durations_in_every_unit(self) -> None:
        """s, m, h, d and w scale as they say."""
        assert [parse_duration(t) for t in ("30s", "15m", "12h", "7d", "2w", "1.5h")] == [
            30,
            900,
            43200,
            604800,
            1209600,
            5400,
        ]
