"""What every launcher must do end to end, on its real platform: one suite, one subclass
per launcher (``tests/launchers/test_<name>.py``), like the transports' conformance.

A subclass provides the ``case`` fixture: a :class:`Case` naming the launcher, its
``-L`` options, the environment the CLI needs to reach the platform, and the bus (a
directory the platform's jobs can reach). Each test runs the real ``pipes-bus run``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipes_bus.launchers import LaunchHandle, make_launcher
from tests.helpers import cli, cli_command

HELLO = Path(__file__).parents[2] / "docs" / "examples" / "hello.py"
REQUIRE_ENV = "PIPES_BUS_REQUIRE_PLATFORMS"  # .ci/run sets it: a skip is then a failure


def need(name: str) -> None:
    """Skip (fail, under .ci/run) with one line naming what to install if ``name`` is missing."""
    from pipes_bus.testing.platforms import missing

    hint = missing(name)
    if hint is None:
        return
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{name} is required here ({REQUIRE_ENV} is set): {hint}")
    pytest.skip(hint)


@dataclass
class Case:
    """A launcher under test: its name, options, the CLI's environment, the bus."""

    launcher: str
    options: dict[str, Any]
    env: dict[str, str]
    bus: str
    extra_args: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        out = ["--launcher", self.launcher]
        for key, value in self.options.items():
            out += ["-L", f"{key}={json.dumps(value)}"]
        return out + self.extra_args

    def run(
        self, *command: str, events: Path, more: tuple[str, ...] = (), timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``pipes-bus run`` of ``command`` on this launcher, to its end."""
        args = ["run", "--bus", self.bus, "--events", str(events), *self.args(), *more]
        return cli(*args, "--", *command, env=self.env, timeout=timeout)

    def popen(
        self, *command: str, events: Path, more: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        args = ["run", "--bus", self.bus, "--events", str(events), *self.args(), *more]
        return subprocess.Popen(
            cli_command(*args, "--", *command),
            env={**os.environ, **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def handle(self, session: str) -> LaunchHandle:
        """The launch handle the run recorded in its session."""
        data = (Path(self.bus) / session / "launch.json").read_bytes()
        import msgspec

        return msgspec.json.decode(data, type=LaunchHandle)

    def finished(self, handle: LaunchHandle) -> bool:
        """Whether the platform says the job is over (nothing of it left running), asked as a
        follower that takes over would: a launcher built with no options, from the handle."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            job = make_launcher(self.launcher).attach(handle)
            try:
                return job.status().finished
            finally:
                job.close()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def new_session() -> tuple[str, tuple[str, str]]:
    """A fresh session id, and the ``--session-id`` arguments that use it."""
    session = f"s-test-{secrets.token_hex(6)}"
    return session, ("--session-id", session)


def mine(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the work's own writers (not the launcher's forwarded platform output)."""
    return [e for e in events if "-output-" not in e["writer"]]


def wait_for(condition: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


BURST = """
import pipes_bus
with pipes_bus.open_worker() as worker:
    for i in range(100_000):
        worker.report_custom_message({"i": i})
"""
CRASH = """
import pipes_bus
with pipes_bus.open_worker() as worker:
    worker.log.info("about to fail")
    raise RuntimeError("the model diverged")
"""
EARLY = """
import sys
print("loading the data", flush=True)
print("no such table: orders", file=sys.stderr, flush=True)
sys.exit(3)
"""
WAIT = """
import time
import pipes_bus
with pipes_bus.open_worker() as worker:
    worker.report_custom_message({"ready": True})
    while True:
        time.sleep(0.05)
"""
BASH = """\
echo "starting"
echo '::pipes-bus::{"kind": "progress", "current": 1, "total": 2}'
echo "half way" >&2
echo '::pipes-bus::{"kind": "custom", "payload": {"rows": 42}}'
echo "done"
"""


class LauncherEndToEnd:
    """The done-when list of the launchers issue, for one launcher (``case`` fixture)."""

    def test_hello_runs_and_every_event_arrives(self, case: Case, tmp_path: Path) -> None:
        """The hello example: exit 0; 1 writer; 5 progress, 5 custom, 1 materialization, 1 check."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        proc = case.run(sys.executable, str(HELLO), events=out, more=args)
        assert proc.returncode == 0, proc.stderr
        events = mine(read_events(out))
        assert [e["payload"] for e in by_kind(events, "custom")] == [
            {"step": s, "rows": 1000 * s} for s in range(1, 6)
        ]
        assert len(by_kind(events, "progress")) == 5
        assert [e["asset_key"] for e in by_kind(events, "materialization")] == ["examples/hello"]
        assert [e["passed"] for e in by_kind(events, "check")] == [True]
        assert len({e["writer"] for e in events}) == 1
        assert case.finished(case.handle(session))

    def test_a_burst_of_100000_arrives_exactly_once_in_order(
        self, case: Case, tmp_path: Path
    ) -> None:
        """100,000 custom messages from a job: every one exactly once, in order."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "burst.py", BURST), events=out)
        assert proc.returncode == 0, proc.stderr
        custom = by_kind(read_events(out), "custom")
        assert [e["payload"]["i"] for e in custom] == list(range(100_000))

    def test_a_crashing_worker_fails_with_its_reason(self, case: Case, tmp_path: Path) -> None:
        """A worker that raises: the command's status (1, Python's), the reason names the error."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "crash.py", CRASH), events=out)
        assert proc.returncode == 1, proc.stderr
        assert "RuntimeError: the model diverged" in proc.stderr

    def test_a_job_that_dies_before_opening_shows_why(self, case: Case, tmp_path: Path) -> None:
        """A job that exits 3 before open_worker(): exit 3, its output forwarded into the session."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "early.py", EARLY), events=out)
        assert proc.returncode == 3, proc.stderr
        texts = [(e["stream"], e["text"]) for e in by_kind(read_events(out), "output")]
        assert ("stdout", "loading the data\n") in texts
        assert ("stderr", "no such table: orders\n") in texts

    def test_a_cancel_stops_the_job_and_leaves_nothing_running(
        self, case: Case, tmp_path: Path
    ) -> None:
        """`pipes-bus cancel` mid-run: the run exits 7 and the platform's job is over."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        run = case.popen(sys.executable, script(tmp_path, "wait.py", WAIT), events=out, more=args)
        try:
            wait_for(lambda: out.exists() and by_kind(read_events(out), "custom"))
            done = cli("cancel", session, "--bus", case.bus, "--reason", "test", env=case.env)
            assert done.returncode == 0, done.stderr
            _, stderr = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                run.wait()
        assert run.returncode == 7, stderr
        assert "test" in stderr
        assert case.finished(case.handle(session))

    def test_a_timeout_cancels_and_stops_the_job(self, case: Case, tmp_path: Path) -> None:
        """--timeout: exit 7, the reason says so, the platform's job is over."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        wait = script(tmp_path, "wait.py", WAIT)
        proc = case.run(sys.executable, wait, events=out, more=("--timeout", "4", *args))
        assert proc.returncode == 7, proc.stderr
        assert "timed out after 4 s" in proc.stderr
        assert case.finished(case.handle(session))

    def test_a_bash_script_reports_through_exec(self, case: Case, tmp_path: Path) -> None:
        """A bash script under --exec: its lines are output, its directives real reports."""
        out = tmp_path / "events.jsonl"
        proc = case.run("bash", script(tmp_path, "job.sh", BASH), events=out, more=("--exec",))
        assert proc.returncode == 0, proc.stderr
        events = mine(read_events(out))
        out_lines = [(e["stream"], e["text"]) for e in by_kind(events, "output")]
        # In order within each stream (two pipes: no order between them).
        assert [t for s, t in out_lines if s == "stdout"] == ["starting\n", "done\n"]
        assert [t for s, t in out_lines if s == "stderr"] == ["half way\n"]
        assert [(e["current"], e["total"]) for e in by_kind(events, "progress")] == [(1, 2)]
        assert [e["payload"] for e in by_kind(events, "custom")] == [{"rows": 42}]
