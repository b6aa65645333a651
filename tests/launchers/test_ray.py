"""The ray launcher through the launchers' end-to-end suite, on a real Ray head."""

from __future__ import annotations

import json
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipes_bus import LaunchError
from pipes_bus.launchers import JobStatus, LaunchSpec, make_launcher
from tests.helpers import cli
from tests.launchers.end_to_end import (
    EARLY,
    Case,
    LauncherEndToEnd,
    by_kind,
    need,
    new_session,
    read_events,
    script,
    wait_for,
)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Any]:
    """One Ray head for the module (about 1.5 GB and a few seconds to start)."""
    need("ray")
    from pipes_bus.testing.platforms import start_ray

    platform = start_ray()
    try:
        yield platform
    finally:
        platform.stop()


@pytest.fixture
def case(ray_head: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    """The head's Jobs API; this process's own Ray clients get the platform's env too."""
    for key, value in ray_head.env.items():
        monkeypatch.setenv(key, value)
    return Case("ray", {"address": ray_head.info["dashboard"]}, ray_head.env, str(tmp_path / "bus"))


def ray_client(case: Case) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(case.options["address"])


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for PID 1 to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


ENV = """
import json, os, sys
import pipes_bus
with pipes_bus.open_worker() as worker:
    names = sorted(k for k in os.environ if k.startswith("PB_TEST_"))
    worker.report_custom_message({"env": {k: os.environ[k] for k in names}, "argv": sys.argv[1:]})
"""
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""


class TestRay(LauncherEndToEnd):
    """A Ray Job on a local head: the Jobs API, the job's log forwarded as output."""

    def test_a_job_that_dies_before_opening_shows_why(self, case: Case, tmp_path: Path) -> None:
        """A job that exits 3 before open_worker(): exit 3, both lines forwarded as "stdout"
        (Ray merges the entrypoint's stdout and stderr into one log)."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "early.py", EARLY), events=out)
        assert proc.returncode == 3, proc.stderr
        texts = [(e["stream"], e["text"]) for e in by_kind(read_events(out), "output")]
        assert ("stdout", "loading the data\n") in texts
        assert ("stdout", "no such table: orders\n") in texts

    def test_an_unreachable_address_is_exit_2_in_one_line(self, case: Case, tmp_path: Path) -> None:
        """No Jobs API at the address: exit 2, one line that names the address."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens
        proc = cli(
            "run",
            "--bus",
            case.bus,
            "--launcher",
            "ray",
            "-L",
            f"address={json.dumps(address)}",
            "--",
            sys.executable,
            "-c",
            "pass",
            env=case.env,
        )
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert address in proc.stderr

    def test_a_second_launch_of_a_session_is_refused(self, case: Case, tmp_path: Path) -> None:
        """The submission id comes from the session: Ray refuses it the second time."""
        session = new_session()[0]
        spec = LaunchSpec([sys.executable, "-c", "pass"], {}, session, case.bus)
        launcher = make_launcher("ray", **case.options)
        launcher.launch(spec)
        with pytest.raises(
            LaunchError, match=rf"refused the job pipes-bus-{session}: .*already exists"
        ):
            launcher.launch(spec)

    def test_env_and_args_reach_the_job_exactly(self, case: Case, tmp_path: Path) -> None:
        """Commas, quotes, spaces, $NAME, ${NAME} and $(...) in env and args arrive as sent,
        nothing executed or expanded; launch.json names the submission and the head."""
        marker = tmp_path / "executed"
        tricky = {
            "PB_TEST_COMMAS": "a,b,,c",
            "PB_TEST_QUOTES": 'it\'s "quoted" `tick`',
            "PB_TEST_SPACES": "  two  spaces  ",
            "PB_TEST_SUBST": f"$(touch {marker})",
            "PB_TEST_DOLLAR": "$HOME and ${PATH} and ${PB_NOT_SET} and $",
            "PB_TEST_NEWLINES": "line one\nline two\n",
            "PB_TEST_UNICODE": "naïve — ünï \\n",
        }
        args = ["a b", "it's", f"$(touch {marker})", "$HOME", "", "A=b"]
        out, (session, more) = tmp_path / "events.jsonl", new_session()
        runner = Case(case.launcher, {**case.options, "env": tricky}, case.env, case.bus)
        env_py = script(tmp_path, "env.py", ENV)
        proc = runner.run(sys.executable, env_py, *args, events=out, more=more)
        assert proc.returncode == 0, proc.stderr
        [payload] = [e["payload"] for e in by_kind(read_events(out), "custom")]
        assert payload == {"env": tricky, "argv": args}
        assert not marker.exists()
        handle, address = case.handle(session), case.options["address"]
        assert (handle.launcher, handle.job_id, handle.where) == (
            "ray",
            f"pipes-bus-{session}",
            address,
        )
        assert handle.extra == {"dashboard": f"{address}/#/jobs/pipes-bus-{session}"}

    def test_a_stop_ends_a_job_that_ignores_sigterm_and_ray_says_stopped(
        self, case: Case, tmp_path: Path
    ) -> None:
        """SIGTERM to the run while its job ignores SIGTERM and the bus: after the grace,
        stop_job; Ray kills the job (its own SIGKILL 3 s later), the run exits 7, and Ray's
        status is STOPPED."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        pid_file = tmp_path / "pid"
        stubborn = script(tmp_path, "stubborn.py", STUBBORN)
        run = case.popen(
            sys.executable, stubborn, str(pid_file), events=out, more=("--grace", "1", *args)
        )
        try:
            wait_for(lambda: run.poll() is not None or (pid_file.exists() and pid_file.read_text()))
            assert run.poll() is None, run.communicate()
            run.send_signal(signal.SIGTERM)
            _, stderr = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 7, stderr
        assert ray_client(case).get_job_status(f"pipes-bus-{session}").value == "STOPPED"
        assert not running(int(pid_file.read_text()))
        assert case.finished(case.handle(session))

    def test_a_job_pending_for_resources_is_cancelled_by_a_forced_stop(
        self, case: Case, tmp_path: Path
    ) -> None:
        """A job waiting for a resource no node has: a stop leaves it pending (Ray holds the
        stop), the forced one reports it cancelled; Ray still has it pending, never run."""
        session = new_session()[0]
        marker = tmp_path / "ran"
        command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
        launcher = make_launcher("ray", **case.options, entrypoint_resources={"nowhere": 1})
        job = launcher.launch(LaunchSpec(command, {}, session, case.bus))
        assert job.status().state == "pending"
        job.stop()
        status = job.status()
        assert (status.state, status.reason) == (
            "pending",
            "asked to stop while pending: Ray ends it as it starts, or fails it after "
            "RAY_JOB_START_TIMEOUT_SECONDS",
        )
        job.stop(force=True)
        assert job.status() == JobStatus(
            "cancelled",
            143,
            "stopped while pending: Ray ends it as it starts, or fails it after "
            "RAY_JOB_START_TIMEOUT_SECONDS",
        )
        assert ray_client(case).get_job_status(f"pipes-bus-{session}").value == "PENDING"
        assert not marker.exists()
