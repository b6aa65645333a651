"""The pipes-bus command: run, tail and ls, their output, events file and exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli, cli_command

HELLO = Path(__file__).parents[2] / "docs" / "examples" / "hello.py"


def worker(tmp_path: Path, body: str) -> str:
    path = tmp_path / "w.py"
    path.write_text(body)
    return str(path)


@pytest.fixture
def bus(tmp_path: Path) -> str:
    return str(tmp_path / "bus")


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class TestRun:
    def test_the_example_runs_and_every_event_is_a_json_line(
        self, tmp_path: Path, bus: str
    ) -> None:
        """`run` exits 0 and --events holds one JSON object per message with kind, writer, seq."""
        out = tmp_path / "events.jsonl"
        proc = cli("run", "--bus", bus, "--events", str(out), "--", sys.executable, str(HELLO))
        assert proc.returncode == 0, proc.stderr
        lines = events(out)
        assert [line["kind"] for line in lines] == (
            ["opened", "log"]
            + ["progress", "custom"] * 5
            + ["materialization", "check", "log", "closed"]
        )
        assert [line["seq"] for line in lines] == list(range(16))
        assert len({line["writer"] for line in lines}) == 1
        assert [line["payload"]["step"] for line in lines if line["kind"] == "custom"] == [
            1,
            2,
            3,
            4,
            5,
        ]
        assert lines[0]["info"]["pid"] > 0
        assert "materialized examples/hello rows=5000" in proc.stderr
        assert "check examples/hello:row_count_positive passed" in proc.stderr

    def test_events_dash_streams_to_stdout(self, tmp_path: Path, bus: str) -> None:
        """--events - writes the JSON lines to stdout and keeps the human view on stderr."""
        script = worker(
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker() as w: w.report_custom_message([1, 'a'])\n",
        )
        proc = cli("run", "-q", "--bus", bus, "--events", "-", "--", sys.executable, script)
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [(line["kind"], line["seq"]) for line in lines] == [
            ("opened", 0),
            ("custom", 1),
            ("closed", 2),
        ]
        assert lines[1]["payload"] == [1, "a"]
        assert proc.stderr == ""

    def test_captured_output_is_printed_once_and_still_carried(
        self, tmp_path: Path, bus: str
    ) -> None:
        """With --capture-output a line the worker prints reaches the terminal once (its real
        stdout), and the bus still carries it as one output event."""
        script = worker(
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker():\n    print('line-77', flush=True)\n",
        )
        out = tmp_path / "events.jsonl"
        proc = cli(
            "run", "--capture-output", "--bus", bus, "--events", str(out),
            "--", sys.executable, script,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert (proc.stdout + proc.stderr).count("line-77") == 1
        carried = [line for line in events(out) if line["kind"] == "output"]
        assert [(line["stream"], line["text"]) for line in carried] == [("stdout", "line-77\n")]

    def test_the_context_reaches_the_worker(self, tmp_path: Path, bus: str) -> None:
        """--context JSON and @file are injected and loaded by the worker."""
        script = worker(
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    w.report_custom_message([w.context.asset_keys, w.context.partition_key, w.context.extras])\n",
        )
        ctx = tmp_path / "ctx.json"
        ctx.write_text(json.dumps({"asset_keys": ["a"], "partition_key": "p1", "extras": {"n": 2}}))
        for arg in (ctx.read_text(), f"@{ctx}"):
            for injector in ("env", "object", "argv"):
                proc = cli(
                    "run",
                    "-q",
                    "--bus",
                    bus,
                    "--injector",
                    injector,
                    "--context",
                    arg,
                    "--events",
                    "-",
                    "--",
                    sys.executable,
                    script,
                )
                assert proc.returncode == 0, proc.stderr
                custom = [json.loads(x) for x in proc.stdout.splitlines()][1]
                assert custom["payload"] == [["a"], "p1", {"n": 2}]

    def test_the_commands_status_passes_through(self, tmp_path: Path, bus: str) -> None:
        """A command exiting 7 makes `run` exit 7, with the reason on stderr."""
        script = worker(
            tmp_path, "import sys, pipes_bus\nwith pipes_bus.open_worker(): pass\nsys.exit(7)\n"
        )
        proc = cli("run", "-q", "--bus", bus, "--", sys.executable, script)
        assert proc.returncode == 7
        assert proc.stderr.strip().splitlines()[-1] == "pipes-bus: the command exited with status 7"

    def test_a_failed_writer_exits_3_with_a_one_line_reason(self, tmp_path: Path, bus: str) -> None:
        """A worker that raises but whose command exits 0 still fails the run (status 3)."""
        script = worker(
            tmp_path,
            "import pipes_bus\ntry:\n    with pipes_bus.open_worker(label='etl'):\n        raise ValueError('bad row 7')\n"
            "except ValueError:\n    pass\n",
        )
        proc = cli("run", "-q", "--bus", bus, "--", sys.executable, script)
        assert proc.returncode == 3
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("pipes-bus: writer etl (w-") and last.endswith(
            "failed: ValueError: bad row 7"
        )

    def test_a_writer_that_never_closes_exits_4(self, tmp_path: Path, bus: str) -> None:
        """A command that exits 0 while its writer never closed makes `run` exit 4."""
        script = worker(
            tmp_path,
            "import os, pipes_bus\nw = pipes_bus.open_worker()\nw.report_custom_message(1)\nw.flush()\nos._exit(0)\n",
        )
        proc = cli("run", "-q", "--bus", bus, "--grace", "60", "--", sys.executable, script)
        assert proc.returncode == 4
        assert (
            "never closed; its last delivered message was #1 (custom)"
            in proc.stderr.splitlines()[-1]
        )

    def test_a_command_killed_by_a_signal_exits_128_plus_the_signal(
        self, tmp_path: Path, bus: str
    ) -> None:
        """A worker killed by SIGKILL makes `run` exit 137 and name the incomplete writer."""
        script = worker(
            tmp_path,
            "import os, signal, pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    w.report_custom_message(1); w.flush(); os.kill(os.getpid(), signal.SIGKILL)\n",
        )
        proc = cli("run", "--bus", bus, "--", sys.executable, script)
        assert proc.returncode == 128 + 9
        assert "the command was killed by SIGKILL" in proc.stderr
        assert "never closed" in proc.stderr

    def test_a_closed_events_pipe_does_not_fail_the_run(self, tmp_path: Path, bus: str) -> None:
        """`--events - | head -1` ends the events, not the session: exit 0, one clear line."""
        script = worker(
            tmp_path,
            "import pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    for i in range(200000): w.report_custom_message(i)\n",
        )
        proc = subprocess.run(
            f"{sys.executable} -m pipes_bus run -q --bus {bus} --events - -- {sys.executable} {script}"
            " | head -1; exit ${PIPESTATUS[0]}",
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["kind"] == "opened"
        assert "Traceback" not in proc.stderr
        assert "the --events reader closed its end" in proc.stderr

    def test_a_command_that_reports_nothing_gets_diagnostics(
        self, tmp_path: Path, bus: str
    ) -> None:
        """A command that never opens a worker succeeds, and the view says where it looked."""
        proc = cli("run", "--bus", bus, "--", sys.executable, "-c", "pass")
        assert proc.returncode == 0
        assert "0 writer(s)" in proc.stderr
        assert "no worker reported into this session:" in proc.stderr
        assert "never called pipes_bus.open_worker()" in proc.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["run", "--bus", "bogus+x://a/b", "--", "true"], "No transport for bogus+x://"),
            (["run", "--bus", "s3:/bucket", "--", "true"], "malformed"),
            (["run", "--context", "{nope", "--", "true"], "--context is not valid JSON"),
            (["run", "--context", "[1]", "--", "true"], "must be a JSON object"),
            (["run", "-o", "novalue", "--", "true"], "is not KEY=VALUE"),
            (["run"], "Give a command to run after --"),
            (["run", "--", "/nonexistent/program"], "Cannot start '/nonexistent/program'"),
            (
                ["run", "--context", '{"asset_keys": 5}', "--", "true"],
                "--context is invalid: Expected `array`, got `int` - at `$.asset_keys`",
            ),
            (
                ["run", "--context", '{"retry_number": "x"}', "--", "true"],
                "--context is invalid: Expected `int`, got `str` - at `$.retry_number`",
            ),
            (["run", "--context", "@/bin/ls", "--", "true"], "the file is not UTF-8 text"),
            (
                ["run", "--context", '{"extras": {"a": "\\ud800"}}', "--", "true"],
                "--context cannot be encoded",
            ),
            (
                ["run", "--context", '{"asset_key": "orders"}', "--", "true"],
                "--context has no member 'asset_key'; valid members are run_id, job_name, "
                "asset_keys,",
            ),
            (["run", "--context", "[" * 5000 + "]" * 5000, "--", "true"], "is not valid JSON"),
            (["run", "--bus", "", "--", "true"], "The bus URL is empty"),
            (["run", "--bus", "memory://x", "--", "true"], "lives in this process's memory"),
        ],
    )
    def test_bad_input_exits_2_with_a_clear_message(
        self, bus: str, args: list[str], message: str
    ) -> None:
        """Bad URLs, contexts, options or commands exit 2 with one line saying what is wrong."""
        if "--bus" not in args:
            args = [args[0], "--bus", bus, *args[1:]]
        proc = cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
        assert proc.stderr.startswith("pipes-bus: ")
        assert len(proc.stderr.splitlines()) == 1, proc.stderr

    def test_the_default_bus_needs_no_configuration(self, tmp_path: Path) -> None:
        """Without --bus or $PIPES_BUS_URL, run uses a local directory and ls finds the session."""
        env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PIPES_BUS_URL": ""}
        proc = cli("run", "--", sys.executable, str(HELLO), env=env)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "cache" / "pipes-bus" / "bus").is_dir()
        listing = cli("ls", "--json", env=env)
        [row] = [json.loads(x) for x in listing.stdout.splitlines()]
        assert row["writers"] == 1

    def test_help_lists_the_exit_statuses(self) -> None:
        """`run --help` documents every exit status."""
        proc = cli("run", "--help")
        assert proc.returncode == 0
        for line in (
            "exit status:",
            "3     a writer closed with an exception",
            "4     a writer opened but never closed",
        ):
            assert line in proc.stdout


class TestTailAndLs:
    def test_tail_replays_a_session_and_resumes_from_a_cursor(
        self, tmp_path: Path, bus: str
    ) -> None:
        """tail prints a finished session's events; with --cursor a second tail prints nothing new."""
        out = tmp_path / "e.jsonl"
        proc = cli("run", "-q", "--bus", bus, "--", sys.executable, str(HELLO))
        assert proc.returncode == 0
        [session] = [p.name for p in Path(bus).iterdir()]
        cursor = tmp_path / "cursor.json"
        first = cli("tail", f"{bus}/{session}", "--events", str(out), "--cursor", str(cursor))
        assert first.returncode == 0, first.stderr
        assert len(events(out)) == 16
        assert "materialized examples/hello" in first.stderr
        again = cli(
            "tail", f"{bus}/{session}", "--events", str(out), "--cursor", str(cursor), "--once"
        )
        assert again.returncode == 0, again.stderr
        assert len(events(out)) == 16

    def test_tail_of_a_missing_session_is_a_clear_error(self, bus: str) -> None:
        """tail names the location when there is no such session."""
        proc = cli("tail", f"{bus}/s-nothing-here")
        assert proc.returncode == 2
        assert "There is no session at" in proc.stderr

    def test_ls_lists_sessions_with_their_state_and_writers(self, tmp_path: Path, bus: str) -> None:
        """ls shows one row per session: succeeded, one writer."""
        for _ in range(2):
            assert cli("run", "-q", "--bus", bus, "--", sys.executable, str(HELLO)).returncode == 0
        proc = cli("ls", bus)
        rows = proc.stdout.strip().splitlines()
        assert rows[0].split() == ["SESSION", "STATE", "CREATED", "AGE", "WRITERS", "REASON"]
        assert len(rows) == 3
        assert all(r.split()[1] == "succeeded" and r.split()[5] == "1" for r in rows[1:])


class TestResume:
    def test_a_killed_orchestrator_is_replaced_without_loss_or_duplicates(
        self, tmp_path: Path, bus: str
    ) -> None:
        """`run` killed mid-session, then `tail --cursor` takes over: every event exactly once."""
        import signal
        import time

        script = worker(
            tmp_path,
            "import time, pipes_bus\nwith pipes_bus.open_worker() as w:\n"
            "    for i in range(3000):\n        w.report_custom_message(i)\n"
            "        if i % 100 == 0: time.sleep(0.05)\n",
        )
        out, cursor = tmp_path / "events.jsonl", tmp_path / "cursor.json"
        run = subprocess.Popen(
            [
                *cli_command(),
                "run",
                "-q",
                "--bus",
                bus,
                "--events",
                str(out),
                "--cursor",
                str(cursor),
                "--",
                sys.executable,
                script,
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") > 300 and cursor.exists():
                break
            time.sleep(0.01)
        run.send_signal(signal.SIGKILL)
        run.wait()
        with out.open("ab") as f:
            f.write(b'{"writer":"torn line, as if killed mid-wri')
        [session] = [p.name for p in Path(bus).iterdir()]
        tail = cli("tail", "-q", f"{bus}/{session}", "--events", str(out), "--cursor", str(cursor))
        assert tail.returncode == 0, tail.stderr
        lines = events(out)
        assert [line["seq"] for line in lines] == list(range(3002))
        assert [line["payload"] for line in lines if line["kind"] == "custom"] == list(range(3000))
