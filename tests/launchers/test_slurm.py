"""The slurm launcher on a one-node Slurm cluster of its own (munged, slurmctld, slurmd).

TestSlurm runs the whole end-to-end suite and the Slurm-specific checks: ranks under srun
as writers of one session, a job Slurm refuses, the exported environment, the forwarded
output files, a forced stop, and nothing left in the queue after a cancel. The tests
without the cluster (the state mapping, the options, the job script) come first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipes_bus import ConfigurationError, LaunchError
from pipes_bus.launchers import LaunchHandle, LaunchSpec, make_launcher
from pipes_bus.launchers._slurm import SlurmJob, SlurmLauncher, _outcome, _Tail
from pipes_bus.testing.platforms import Platform, start_slurm
from tests.helpers import cli
from tests.launchers.end_to_end import (
    HELLO,
    Case,
    LauncherEndToEnd,
    by_kind,
    mine,
    need,
    new_session,
    read_events,
    script,
    wait_for,
)

# Values that a shell string built by hand, or sbatch --export=NAME=VALUE, would break.
TRICKY = {
    "WITH_COMMAS": '{"a": [1, 2, 3], "b": "x,y"}',
    "WITH_QUOTES": "it's \"quoted\" and 'single'",
    "WITH_SPACES": "  leading and trailing  ",
    "WITH_NEWLINES": "line one\nline two\n",
    "WITH_DOLLARS": "$HOME ${PATH} `id` $((1+1))",
}
ECHO_ENV = """
import json, os
import pipes_bus
with pipes_bus.open_worker() as worker:
    worker.report_custom_message({k: os.environ.get(k) for k in json.loads(os.environ["NAMES"])})
"""
PRINTS = """
import sys
for i in range(50):
    print(f"out {i}", flush=True)
    print(f"err {i}", file=sys.stderr, flush=True)
sys.stdout.write("no newline at the end")
"""
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def slurm() -> Iterator[Platform]:
    """A private one-node cluster (4 CPUs, so a job still completing never blocks the next)."""
    need("slurm")
    platform = start_slurm(cpus=4)
    try:
        yield platform
    finally:
        platform.stop()


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("bus"))


@pytest.fixture
def slurm_env(slurm: Platform) -> Iterator[dict[str, str]]:
    """This process's environment points at the cluster (for Job calls made here)."""
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(slurm.env)
    yield slurm.env
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


def squeue(env: dict[str, str], name: str) -> list[str]:
    """The queue's lines for jobs named ``name`` (pending, running, completing)."""
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i %T"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    return out.stdout.splitlines()


def spec(session: str, command: list[str], bus: str) -> LaunchSpec:
    return LaunchSpec(command=command, env={}, session=session, bus=bus, bus_dir=bus)


def wait_finished(job: SlurmJob, timeout: float = 60.0) -> None:
    wait_for(lambda: job.status().finished, timeout)


class TestState:
    """Slurm's JobState and ExitCode mapped to a JobStatus (no cluster needed)."""

    @pytest.mark.parametrize(
        ("state", "code", "expected"),
        [
            ("PENDING", "0:0", ("pending", None, None)),
            ("CONFIGURING", "0:0", ("pending", None, None)),
            ("RUNNING", "0:0", ("running", None, None)),
            ("COMPLETING", "0:0", ("running", None, None)),
            ("COMPLETED", "0:0", ("succeeded", 0, None)),
            ("FAILED", "3:0", ("failed", 3, "FAILED")),
            ("FAILED", "0:9", ("failed", 137, "FAILED")),
            ("OUT_OF_MEMORY", "0:125", ("failed", 253, "OUT_OF_MEMORY")),
            ("TIMEOUT", "0:15", ("failed", 143, "TIMEOUT")),
            ("NODE_FAIL", "0:0", ("failed", 1, "NODE_FAIL")),
            ("BOOT_FAIL", "0:0", ("failed", 1, "BOOT_FAIL")),
            ("DEADLINE", "0:0", ("failed", 1, "DEADLINE")),
            ("CANCELLED", "0:15", ("cancelled", 143, "CANCELLED")),
            ("CANCELLED", "143:0", ("cancelled", 143, "CANCELLED")),
            ("CANCELLED", "0:0", ("cancelled", 143, "CANCELLED")),
            ("CANCELLED by 0", "0:9", ("cancelled", 137, "CANCELLED by 0")),
        ],
    )
    def test_states_map_to_job_status(
        self, state: str, code: str, expected: tuple[str, int | None, str | None]
    ) -> None:
        """Each Slurm state maps to one JobState; a finished job always has an exit code."""
        status = _outcome(state, code, stopped=False)
        assert (status.state, status.exit_code, status.reason) == expected

    def test_a_job_we_stopped_that_failed_is_cancelled(self) -> None:
        """After our stop, a batch step killed by SIGKILL (FAILED 0:9) is cancelled, 137."""
        status = _outcome("FAILED", "0:9", stopped=True)
        assert (status.state, status.exit_code) == ("cancelled", 137)

    def test_a_state_this_slurm_does_not_know_is_not_over(self) -> None:
        """An unlisted state keeps the job running (polled again), with the state named."""
        status = _outcome("NEW_STATE", "0:0", stopped=False)
        assert (status.state, status.reason) == ("running", "Slurm says NEW_STATE")


class TestTail:
    """Reading a job's output file as it grows (no cluster needed)."""

    def test_new_lines_only_and_a_partial_line_waits_for_its_end(self, tmp_path: Path) -> None:
        """Each read gives the lines appended since the last; a partial line waits."""
        path = tmp_path / "job.out"
        tail = _Tail(str(path), "stdout")
        assert tail.read(final=False) == []  # the job has not started: no file yet
        path.write_bytes(b"one\r\ntw")
        assert tail.read(final=False) == [("stdout", "one")]
        assert tail.read(final=False) == []
        with path.open("ab") as fh:
            fh.write("o\nthr\u00e9e".encode())
        assert tail.read(final=False) == [("stdout", "two")]
        assert tail.read(final=True) == [("stdout", "thr\u00e9e")]
        assert tail.read(final=True) == []


class TestOptions:
    """The options and the job script (no cluster needed)."""

    def test_sbatch_arguments_carry_every_option(self, tmp_path: Path) -> None:
        """partition, time, ntasks, cpus_per_task, gres, then the extra sbatch arguments."""
        launcher = make_launcher(
            "slurm",
            partition="gpu",
            time="02:00:00",
            ntasks=2,
            cpus_per_task=4,
            gres="gpu:1",
            sbatch=["--account=x", "--qos=y"],
        )
        assert isinstance(launcher, SlurmLauncher)
        args = launcher.sbatch_args(spec("s-1", ["python"], str(tmp_path)), tmp_path)
        assert args == [
            "sbatch",
            "--parsable",
            "--job-name=s-1",
            f"--output={tmp_path / 'job.out'}",
            f"--error={tmp_path / 'job.err'}",
            "--export=ALL",
            "--ntasks=2",
            "--partition=gpu",
            "--time=02:00:00",
            "--cpus-per-task=4",
            "--gres=gpu:1",
            "--account=x",
            "--qos=y",
        ]
        assert launcher.describe() == "slurm (partition gpu, 2 tasks)"

    @pytest.mark.parametrize(
        ("option", "value"),
        [("time", "two hours"), ("ntasks", 0), ("cpus_per_task", "4"), ("partition", "")],
    )
    def test_a_bad_option_names_itself(self, option: str, value: object) -> None:
        """A bad option value is a ConfigurationError naming the option."""
        with pytest.raises(ConfigurationError, match=repr(option)):
            make_launcher("slurm", **{option: value})

    def test_the_script_exports_quoted_values_and_execs_the_command(self) -> None:
        """One export line per variable (shlex-quoted), the command exec'd, srun for ranks."""
        launch = LaunchSpec(
            command=["python", "my job.py"], env={"A": "x, y"}, session="s-1", bus="b"
        )
        lines = SlurmLauncher(env={"B": "$(id)"}).script(launch).splitlines()
        assert lines[0] == "#!/bin/bash"
        assert [line for line in lines if not line.startswith("#")] == [
            "export B='$(id)'",
            "export A='x, y'",
            "exec python 'my job.py'",
        ]
        two = SlurmLauncher(ntasks=2).script(launch).splitlines()
        assert two[-1] == "exec srun --label python 'my job.py'"

    def test_a_name_no_shell_can_export_is_refused(self) -> None:
        """A variable name that is not an identifier is a ConfigurationError, not a script."""
        with pytest.raises(ConfigurationError, match="'BAD-NAME'"):
            SlurmLauncher(env={"BAD-NAME": "x"})


class TestSlurm(LauncherEndToEnd):
    """A batch job on the private cluster, its bus a directory every node sees."""

    @pytest.fixture
    def case(self, slurm: Platform, bus: str) -> Case:
        return Case("slurm", {"partition": "debug"}, dict(slurm.env), bus)

    def test_two_ranks_are_two_writers_of_one_session(self, case: Case, tmp_path: Path) -> None:
        """ntasks=2: hello under srun, 2 writers (rank-0, rank-1), each message exactly once."""
        case.options["ntasks"] = 2
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        proc = case.run(sys.executable, str(HELLO), events=out, more=args)
        assert proc.returncode == 0, proc.stderr
        events = mine(read_events(out))
        writers = {e["writer"]: e["info"]["label"] for e in by_kind(events, "opened")}
        assert sorted(writers.values()) == ["rank-0", "rank-1"]
        for writer in writers:
            custom = [e["payload"] for e in by_kind(events, "custom") if e["writer"] == writer]
            assert custom == [{"step": s, "rows": 1000 * s} for s in range(1, 6)]
        assert len(by_kind(events, "custom")) == 10
        assert case.handle(session).extra["ntasks"] == "2"

    def test_a_job_slurm_refuses_is_exit_2_with_its_message(
        self, case: Case, tmp_path: Path
    ) -> None:
        """An unknown partition: exit 2 and one line carrying sbatch's own message."""
        case.options["partition"] = "no-such-partition"
        proc = case.run(sys.executable, str(HELLO), events=tmp_path / "events.jsonl")
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert "Slurm refused the job" in lines[0]
        assert "invalid partition specified: no-such-partition" in lines[0]

    def test_the_environment_arrives_exactly_and_nothing_is_injected(
        self, case: Case, tmp_path: Path
    ) -> None:
        """Commas, quotes, spaces, newlines and $(...) arrive as given; none is executed."""
        pwned = tmp_path / "pwned"
        values = {**TRICKY, "WITH_COMMAND": f"$(touch {pwned})", "WITH_TICKS": f"`touch {pwned}`"}
        case.options["env"] = {**values, "NAMES": json.dumps(sorted(values))}
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "env.py", ECHO_ENV), events=out)
        assert proc.returncode == 0, proc.stderr
        assert [e["payload"] for e in by_kind(read_events(out), "custom")] == [values]
        assert not pwned.exists()

    def test_the_job_output_is_forwarded_in_order_per_stream(
        self, case: Case, tmp_path: Path
    ) -> None:
        """stdout and stderr lines become output events, in order per stream, the last
        line without its newline included once the job has ended."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "prints.py", PRINTS), events=out)
        assert proc.returncode == 0, proc.stderr
        texts = [(e["stream"], e["text"]) for e in by_kind(read_events(out), "output")]
        # As a worker's captured output, each event is a line with its newline.
        assert [t for s, t in texts if s == "stdout"] == [
            *(f"out {i}\n" for i in range(50)),
            "no newline at the end\n",
        ]
        assert [t for s, t in texts if s == "stderr"] == [f"err {i}\n" for i in range(50)]

    def test_after_a_cancel_the_queue_holds_nothing_of_the_session(
        self, case: Case, tmp_path: Path
    ) -> None:
        """A job that ignores SIGTERM and the cancel: exit 7, and squeue shows none of it."""
        case.extra_args = ["--grace", "1"]
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        run = case.popen(
            sys.executable, script(tmp_path, "ignores.py", IGNORES_TERM), events=out, more=args
        )
        try:
            wait_for(lambda: out.exists() and by_kind(read_events(out), "output"))
            done = cli("cancel", session, "--bus", case.bus, "--grace", "0", env=case.env)
            assert done.returncode == 0, done.stderr
            _, stderr = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                run.wait()
        assert run.returncode == 7, stderr
        assert squeue(case.env, session) == []
        assert case.finished(case.handle(session))

    def test_a_forced_stop_kills_at_once(self, slurm_env: dict[str, str], bus: str) -> None:
        """stop(force=True) on a job that ignores SIGTERM: over within seconds, cancelled 137."""
        session = new_session()[0]
        Path(bus, session).mkdir()
        path = Path(bus, session, "ignores.py")
        path.write_text(IGNORES_TERM)
        job = SlurmLauncher(partition="debug").launch(
            spec(session, [sys.executable, str(path)], bus)
        )
        lines: list[tuple[str, str]] = []
        wait_for(lambda: lines.extend(job.output()) or ("stdout", "up") in lines, 60)
        started = time.monotonic()
        job.stop(force=True)
        wait_finished(job, 30)
        took = time.monotonic() - started
        status = job.status()
        assert (status.state, status.exit_code) == ("cancelled", 137)
        assert took < 4.0, f"KillWait is 5 s: a forced stop must not wait for it ({took:.1f} s)"
        assert squeue(slurm_env, session) == []

    def test_a_job_slurm_forgot_is_unknown_with_why(self, slurm_env: dict[str, str]) -> None:
        """A job id the controller does not know: unknown, saying what was asked."""
        job = SlurmLauncher().attach(LaunchHandle(launcher="slurm", job_id="999999"))
        status = job.status()
        assert status.state == "unknown"
        assert status.reason is not None and "Slurm no longer knows job 999999" in status.reason

    def test_a_job_id_now_naming_another_job_is_unknown(
        self, slurm_env: dict[str, str], tmp_path: Path
    ) -> None:
        """A handle whose job id the cluster gave to another job (ids start again after a
        reinstall): unknown, never that job's state."""
        other = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--job-name=someone-else",
                f"--output={tmp_path}/o",
                "--wrap",
                "true",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        handle = LaunchHandle(launcher="slurm", job_id=other, extra={"job_name": "s-mine"})
        status = SlurmLauncher().attach(handle).status()
        assert status.state == "unknown"
        assert status.reason is not None and "is now another job" in status.reason

    def test_a_launch_without_a_controller_is_a_launch_error(self, tmp_path: Path) -> None:
        """sbatch that cannot reach slurmctld: a LaunchError naming the cluster's config."""
        need("slurm")
        conf = tmp_path / "slurm.conf"
        # Port 9 on loopback: nothing listens; MessageTimeout=1 makes sbatch give up at once.
        conf.write_text(
            "ClusterName=none\nSlurmctldHost=nowhere(127.0.0.1)\nSlurmctldPort=9\nMessageTimeout=1\n"
        )
        saved = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)
        try:
            with pytest.raises(LaunchError, match="Cannot reach the controller") as info:
                SlurmLauncher().launch(spec("s-none", ["true"], str(tmp_path)))
        finally:
            if saved is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = saved
        assert "\n" not in str(info.value)
