"""`pipes-bus run` and `tail` at the edges: interrupts, late writers, takeovers, hostile text."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from pipes_bus._orchestrator.result import EXIT_CANCELLED
from tests.cli.test_cli import events, worker
from tests.helpers import cli, cli_command


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


# A worker that notes every SIGINT and SIGTERM it gets, ignoring them all, and a child in
# its process group that ignores them too: only SIGKILL ends either.
STUBBORN = """
import os, pathlib, signal, subprocess, sys, time, pipes_bus
marks = pathlib.Path(sys.argv[1])
def note(signum, frame):
    with marks.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")
signal.signal(signal.SIGINT, note)
signal.signal(signal.SIGTERM, note)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time\\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "time.sleep(600)"])
pathlib.Path(sys.argv[2]).write_text(f"{os.getpid()} {child.pid}")
with pipes_bus.open_worker() as w:
    w.log.info("started")
    while True:
        time.sleep(0.05)
"""


class TestInterrupts:
    """Ctrl-C and SIGTERM on `run`: the session cancelled, the signal passed on, escalated on
    a bounded timeline, nothing left, status 7."""

    def start(self, tmp_path: Path, grace: float) -> tuple[subprocess.Popen[str], Path, list[int]]:
        marks, pids = tmp_path / "marks", tmp_path / "pids"
        script = worker(tmp_path, STUBBORN)
        run = subprocess.Popen(
            [
                *cli_command(),
                "run",
                "--bus",
                str(tmp_path / "bus"),
                "--grace",
                str(grace),
                "--",
                sys.executable,
                script,
                str(marks),
                str(pids),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        wait_for(lambda: bool(list((tmp_path / "bus").glob("*/streams/*/*"))))
        return run, marks, [int(p) for p in pids.read_text().split()]

    def marks(self, path: Path) -> list[str]:
        return path.read_text().split() if path.exists() else []

    def test_the_end_of_grace_terminates_then_kills_the_whole_group(self, tmp_path: Path) -> None:
        """One Ctrl-C reaches the command as SIGINT and cancels the session (the worker's
        SIGTERM handler runs); when the grace runs out its process group gets SIGTERM, then
        SIGKILL; run exits 7 and nothing it started is left."""
        run, marks, pids = self.start(tmp_path, grace=1)
        run.send_signal(signal.SIGINT)
        wait_for(lambda: self.marks(marks)[:1] == ["SIGINT"])
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == EXIT_CANCELLED, stderr
        assert self.marks(marks) == ["SIGINT", "SIGTERM", "SIGTERM"]
        assert not any(alive(pid) for pid in pids)
        assert "interrupted: cancelled the session and passed the interrupt on" in stderr
        assert "waiting up to 1 s" in stderr
        assert "killed by SIGKILL after pipes-bus passed on an interrupt" in stderr
        assert "pipes-bus: the session was cancelled by " in stderr
        assert "(interrupt): interrupted (Ctrl-C)" in stderr

    def test_a_second_ctrl_c_stops_at_once_and_a_third_kills(self, tmp_path: Path) -> None:
        """The second Ctrl-C terminates the group without waiting for the grace; the third
        kills it at once; run never leaves its command behind."""
        run, marks, pids = self.start(tmp_path, grace=600)
        run.send_signal(signal.SIGINT)
        wait_for(lambda: self.marks(marks) == ["SIGINT", "SIGTERM"])  # the cancel's SIGTERM
        run.send_signal(signal.SIGINT)
        wait_for(lambda: self.marks(marks) == ["SIGINT", "SIGTERM", "SIGTERM"])
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == EXIT_CANCELLED, stderr
        assert not any(alive(pid) for pid in pids)
        assert "killing the command's process group" in stderr

    def test_sigterm_is_passed_on_and_escalated_the_same_way(self, tmp_path: Path) -> None:
        """SIGTERM to run reaches the command's group and cancels the session, and the
        grace bounds the wait."""
        run, marks, pids = self.start(tmp_path, grace=1)
        run.send_signal(signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == EXIT_CANCELLED, stderr
        assert self.marks(marks) == ["SIGTERM", "SIGTERM", "SIGTERM"]
        assert not any(alive(pid) for pid in pids)

    def test_a_worker_that_closes_on_ctrl_c_ends_the_run_cleanly(self, tmp_path: Path) -> None:
        """A worker that handles the interrupt closes its stream: its `closed` is delivered,
        and the run, cancelled, exits 7."""
        script = worker(
            tmp_path,
            "import time, pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    w.log.info('go')\n    time.sleep(600)\n",
        )
        out = tmp_path / "e.jsonl"
        run = subprocess.Popen(
            [
                *cli_command(),
                "run",
                "--bus",
                str(tmp_path / "bus"),
                "--events",
                str(out),
                "--",
                sys.executable,
                script,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: out.exists() and b'"kind":"log"' in out.read_bytes())
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == EXIT_CANCELLED, stderr
        assert "the command was killed by SIGINT after pipes-bus passed on an interrupt" in stderr
        closed = [e for e in events(out) if e["kind"] == "closed"]
        assert closed and closed[0]["exception"]["type"] == "KeyboardInterrupt"


class TestTimeout:
    def test_the_timeout_cancels_and_ends_a_worker_that_ignores_sigterm(
        self, tmp_path: Path
    ) -> None:
        """--timeout 1: the session is cancelled, the worker (whose SIGTERM handler does
        nothing) gets SIGTERM twice, then SIGKILL once the grace is over; run exits 7 with
        the timeout as the reason, and nothing is left running."""
        marks, pids = tmp_path / "marks", tmp_path / "pids"
        script = worker(tmp_path, STUBBORN)
        proc = cli(
            "run",
            "--bus",
            str(tmp_path / "bus"),
            "--timeout",
            "1",
            "--grace",
            "1",
            "--",
            sys.executable,
            script,
            str(marks),
            str(pids),
        )
        assert proc.returncode == EXIT_CANCELLED, proc.stderr
        assert "timed out after 1 s (--timeout): cancelled the session" in proc.stderr
        assert "(timeout): timed out after 1 s (--timeout)" in proc.stderr
        assert "the command was killed by SIGKILL after pipes-bus timed out" in proc.stderr
        assert sorted(set(marks.read_text().split())) == ["SIGTERM"]
        assert not any(alive(int(pid)) for pid in pids.read_text().split())

    def test_a_command_done_before_its_timeout_is_not_cancelled(self, tmp_path: Path) -> None:
        """A generous --timeout changes nothing for a command that finishes in time."""
        script = worker(tmp_path, "import pipes_bus\npipes_bus.open_worker().close()\n")
        proc = cli(
            "run", "--bus", str(tmp_path / "bus"), "--timeout", "600", "--", sys.executable, script
        )
        assert proc.returncode == 0, proc.stderr
        assert "cancel" not in proc.stderr


class TestLateWriters:
    def test_a_writer_that_opens_just_after_the_command_exits_is_followed(
        self, tmp_path: Path
    ) -> None:
        """A detached child (its own session) that opens 50 ms after its parent exited is
        found by the look `run` takes once more, `settle` after the exit."""
        script = worker(
            tmp_path,
            "import subprocess, sys, pipes_bus\n"
            "with pipes_bus.open_worker(label='parent') as w:\n"
            "    w.report_custom_message('parent')\n"
            "subprocess.Popen([sys.executable, '-c', 'import time, pipes_bus\\n"
            "time.sleep(0.05)\\n"
            'with pipes_bus.open_worker(label="child") as w: w.report_custom_message("child")\'],'
            " start_new_session=True)\n",
        )
        out = tmp_path / "e.jsonl"
        proc = cli(
            "run",
            "--bus",
            str(tmp_path / "bus"),
            "--settle",
            "2",
            "--events",
            str(out),
            "--",
            sys.executable,
            script,
        )
        assert proc.returncode == 0, proc.stderr
        assert "2 writer(s)" in proc.stderr
        assert sorted(e["payload"] for e in events(out) if e["kind"] == "custom") == [
            "child",
            "parent",
        ]


class TestTakeover:
    """A follower that takes over with --cursor ends with the status a fresh one would."""

    def test_tail_after_a_failed_writer_exits_3(self, tmp_path: Path) -> None:
        """run saves its cursor after the failure; tail --cursor resumes past it: still 3."""
        bus, cursor = str(tmp_path / "bus"), tmp_path / "cursor.json"
        script = worker(
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker():\n    raise ValueError('bad rows')\n",
        )
        run = cli("run", "-q", "--bus", bus, "--cursor", str(cursor), "--", sys.executable, script)
        assert run.returncode == 1, run.stderr
        [session] = [p.name for p in Path(bus).iterdir()]
        tail = cli("tail", f"{bus}/{session}", "--cursor", str(cursor))
        assert tail.returncode == 3, tail.stderr
        assert "failed: ValueError: bad rows" in tail.stderr
        fresh = cli("tail", f"{bus}/{session}")
        assert fresh.returncode == 3

    def test_tail_after_a_fault_exits_5(self, tmp_path: Path) -> None:
        """A fault seen before the takeover, at a chunk the resumed follower never reads
        again, still makes it exit 5."""
        bus, cursor = str(tmp_path / "bus"), tmp_path / "cursor.json"
        script = worker(
            tmp_path,
            "import os, pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    w.flush()\n"
            "    stream = os.path.join(os.environ['BUS'], w.session, 'streams', w.writer_id)\n"
            "    with open(os.path.join(stream, '%020d' % 1), 'wb') as f:\n"
            "        f.write(b'<html>planted</html>')\n"
            "    w.report_custom_message(1)\n",
        )
        run = cli(
            "run",
            "-q",
            "--bus",
            bus,
            "--cursor",
            str(cursor),
            "--",
            sys.executable,
            script,
            env={"BUS": bus},
        )
        assert run.returncode == 5, run.stderr
        [session] = [p.name for p in Path(bus).iterdir()]
        tail = cli("tail", f"{bus}/{session}", "--cursor", str(cursor))
        assert tail.returncode == 5, tail.stderr

    def test_a_corrupt_or_foreign_cursor_file_is_a_one_line_error(self, tmp_path: Path) -> None:
        """A cursor file that is not one, or is another session's, exits 2 with one line."""
        bus = str(tmp_path / "bus")
        script = worker(tmp_path, "import pipes_bus\nwith pipes_bus.open_worker(): pass\n")
        assert cli("run", "-q", "--bus", bus, "--", sys.executable, script).returncode == 0
        [session] = [p.name for p in Path(bus).iterdir()]
        bad = tmp_path / "bad.json"
        bad.write_text("{not a cursor")
        proc = cli("tail", f"{bus}/{session}", "--cursor", str(bad))
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"pipes-bus: --cursor {bad} is not a pipes_bus cursor")
        other = tmp_path / "other.json"
        other.write_text('{"session": "s-other"}')
        proc = cli("tail", f"{bus}/{session}", "--cursor", str(other))
        assert proc.returncode == 2
        assert "is for session 's-other'" in proc.stderr
        assert len(proc.stderr.splitlines()) == 1

    def test_a_bad_key_for_tail_is_a_one_line_error(self, tmp_path: Path) -> None:
        """PIPES_BUS_KEY that is not hex, or shorter than 32 bytes, exits 2 with one line."""
        bus = str(tmp_path / "bus")
        script = worker(tmp_path, "import pipes_bus\nwith pipes_bus.open_worker(): pass\n")
        assert cli("run", "-q", "--bus", bus, "--", sys.executable, script).returncode == 0
        [session] = [p.name for p in Path(bus).iterdir()]
        for key, text in (("zz" * 32, "is not a hexadecimal key"), ("ab" * 8, "holds 8 bytes")):
            proc = cli("tail", f"{bus}/{session}", env={"PIPES_BUS_KEY": key})
            assert proc.returncode == 2
            assert text in proc.stderr and len(proc.stderr.splitlines()) == 1


class TestDagsterOnlySessions:
    def test_tail_of_a_finished_dagster_only_session_ends(self, tmp_path: Path) -> None:
        """A session whose only worker wrote Dagster Pipes messages (the default file
        writer's lines) ends for `tail`, with or without a cursor."""
        bus = str(tmp_path / "bus")
        script = worker(
            tmp_path,
            "import base64, json, os, zlib\n"
            "params = json.loads(zlib.decompress(base64.b64decode("
            "os.environ['DAGSTER_PIPES_MESSAGES'])))\n"
            "with open(params['path'], 'a') as f:\n"
            "    for m in ('opened', 'closed'):\n"
            "        f.write(json.dumps({'__dagster_pipes_version': '0.1', 'method': m,"
            " 'params': {}}) + '\\n')\n",
        )
        run = cli("run", "-q", "--bus", bus, "--", sys.executable, script)
        assert run.returncode == 0, run.stderr
        [session] = [p.name for p in Path(bus).iterdir()]
        tail = cli("tail", f"{bus}/{session}", timeout=60)
        assert tail.returncode == 0, tail.stderr
        cursor = tmp_path / "c.json"
        assert cli("tail", f"{bus}/{session}", "--cursor", str(cursor)).returncode == 0
        again = cli("tail", f"{bus}/{session}", "--cursor", str(cursor), timeout=60)
        assert again.returncode == 0, again.stderr


class TestSignedSessions:
    def test_forged_dagster_messages_in_a_signed_session_are_refused(self, tmp_path: Path) -> None:
        """Anyone who can write {session}/dagster/ without the key gets nothing delivered in
        a signed session: each forged line is an unauthenticated fault, and run exits 5."""
        script = worker(
            tmp_path,
            "import base64, json, os, pipes_bus, zlib\n"
            "params = json.loads(zlib.decompress(base64.urlsafe_b64decode("
            "os.environ['PIPES_BUS_SESSION'])))\n"
            "assert 'DAGSTER_PIPES_MESSAGES' not in os.environ\n"
            "folder = os.path.join(params['bus'], params['session'], 'dagster')\n"
            "os.makedirs(folder, exist_ok=True)\n"
            "with open(os.path.join(folder, 'messages.jsonl'), 'a') as f:\n"
            "    for m, p in (('opened', {}), ('report_asset_materialization',"
            " {'asset_key': 'forged'}), ('closed', {})):\n"
            "        f.write(json.dumps({'__dagster_pipes_version': '0.1', 'method': m,"
            " 'params': p}) + '\\n')\n"
            "with pipes_bus.open_worker() as w: w.report_custom_message('signed')\n",
        )
        out = tmp_path / "e.jsonl"
        proc = cli(
            "run",
            "--sign",
            "--bus",
            str(tmp_path / "bus"),
            "--events",
            str(out),
            "--",
            sys.executable,
            script,
        )
        assert proc.returncode == 5, proc.stderr
        assert "materialized forged" not in proc.stderr
        lines = events(out)
        assert [x["payload"] for x in lines if x["kind"] == "custom"] == ["signed"]
        assert [x["reason"] for x in lines if x["kind"] == "fault"] == ["unauthenticated"] * 3
        assert not [x for x in lines if x["kind"] == "materialization"]


class TestHostileText:
    def test_worker_text_cannot_forge_lines_or_drive_the_terminal(self, tmp_path: Path) -> None:
        """Newlines, carriage returns, ANSI escapes and bidi overrides from a worker are shown
        as escapes: every line of the view starts as the view writes it."""
        script = worker(
            tmp_path,
            "import pipes_bus\n"
            "with pipes_bus.open_worker(label='w\\x1b[2J') as w:\n"
            "    w.log.warning('ok\\n[w-forged] INFO    all good\\x1b[31m\\r\\u202e')\n"
            "    w.report_materialization('a\\nb', metadata={'k': 'v\\x07'})\n",
        )
        proc = cli("run", "--bus", str(tmp_path / "bus"), "--", sys.executable, script)
        assert proc.returncode == 0, proc.stderr
        for char in ("\x1b", "\r", "\x07", "\u202e"):
            assert char not in proc.stderr
        assert not any(line.startswith("[w-forged]") for line in proc.stderr.splitlines())
        assert "ok\\n[w-forged] INFO    all good\\e[31m\\r\\u202e" in proc.stderr
        assert "materialized a\\nb" in proc.stderr


class TestHostileBus:
    def test_tail_once_with_a_fifo_at_a_chunk_key_ends_with_a_fault(self, tmp_path: Path) -> None:
        """A FIFO where a chunk belongs does not hang `tail --once`: exit 5, the key named."""
        bus = tmp_path / "bus"
        script = worker(tmp_path, "import pipes_bus\nwith pipes_bus.open_worker(): pass\n")
        assert cli("run", "-q", "--bus", str(bus), "--", sys.executable, script).returncode == 0
        [stream] = list(bus.glob("*/streams/*"))
        (stream / f"{1:020d}").unlink()
        os.mkfifo(stream / f"{1:020d}")
        session = stream.parent.parent.name
        proc = cli("tail", "--once", f"{bus}/{session}", timeout=30)
        assert proc.returncode == 5, proc.stderr
        assert f"{1:020d}" in proc.stderr

    def test_a_bus_that_cannot_be_written_exits_6_naming_it(self, tmp_path: Path) -> None:
        """A bus nobody can write (here under /proc) is exit 6 with one sentence naming the
        URL, before anything is launched."""
        marker = tmp_path / "ran"
        proc = cli("run", "--bus", "/proc/pipes-bus-bus", "--", "touch", str(marker))
        assert proc.returncode == 6, proc.stderr
        assert proc.stderr.startswith("pipes-bus: Cannot write /proc/pipes-bus-bus/")
        assert len(proc.stderr.splitlines()) == 1
        assert not marker.exists()


def decode(value: str) -> object:
    """A Dagster bootstrap variable."""
    return json.loads(zlib.decompress(base64.b64decode(value)))
