"""The launch driver, over a Job that is ours: escalation, output forwarding, the outcome.

The platforms themselves are tested in tests/launchers/ against the real thing; here the
Job is a small class of this file, so the driver's own rules can be pinned exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipes_bus._orchestrator.launch import MAX_LINE, MAX_OUTPUT, JobControl
from pipes_bus.launchers import Job, JobStatus, Launcher, LaunchHandle, LaunchSpec
from pipes_bus.orchestrator import Session, launch
from tests.helpers import FakeClock


class Scripted(Job):
    """A job that prints ``lines`` then ends with ``code``, and records each stop asked."""

    def __init__(self, lines: list[tuple[str, str]], code: int = 0, polls: int = 2) -> None:
        self.handle = LaunchHandle(launcher="scripted", job_id="j-1", where="here")
        self.lines, self.code, self.polls = list(lines), code, polls
        self.stops: list[bool] = []
        self.closed = False

    def status(self) -> JobStatus:
        self.polls -= 1
        if self.stops and self.stops[-1]:
            return JobStatus("cancelled", 137, "killed")
        if self.polls > 0:
            return JobStatus("running")
        return JobStatus("succeeded" if self.code == 0 else "failed", self.code, "done")

    def output(self) -> list[tuple[str, str]]:
        out, self.lines = self.lines, []
        return out

    def stop(self, *, force: bool = False) -> None:
        self.stops.append(force)

    def close(self) -> None:
        self.closed = True


class ScriptedLauncher(Launcher):
    """Launches a Scripted job; remembers the spec it was given."""

    name = "scripted"

    def __init__(self, job: Scripted) -> None:
        self.job = job
        self.spec: LaunchSpec | None = None

    def launch(self, spec: LaunchSpec) -> Job:
        self.spec = spec
        return self.job


def control(tmp_path: Path, job: Job, clock: FakeClock) -> JobControl:
    session = Session(str(tmp_path / "bus")).open()
    return JobControl(session, job, grace=10.0, kill_after=5.0, clock=clock)


class TestEscalation:
    def test_a_stop_waits_the_grace_then_asks_politely_then_forces(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Cancel: nothing for 10 s (the bus's request works), polite stop, then 5 s later force."""
        job = Scripted([], polls=10**6)
        ctl = control(tmp_path, job, clock)
        ctl.request_stop("cancel")
        clock.advance(9.9)
        ctl.tick()
        assert job.stops == []
        clock.advance(0.2)
        ctl.tick()
        assert job.stops == [False]
        clock.advance(5.1)
        ctl.tick()
        assert job.stops == [False, True]
        assert ctl.describe_stop() == "the scripted job was killed (cancel)"

    def test_a_second_request_asks_the_platform_at_once(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """A second Ctrl-C skips the grace: the platform's polite stop now; a third forces."""
        job = Scripted([], polls=10**6)
        ctl = control(tmp_path, job, clock)
        ctl.request_stop("interrupt")
        ctl.request_stop("interrupt")
        assert job.stops == [False]
        ctl.request_stop("interrupt")
        assert job.stops == [False, True]

    def test_a_job_that_ended_within_the_grace_is_not_stopped(
        self, tmp_path: Path, clock: FakeClock
    ) -> None:
        """If the work heard the cancel and ended, the platform is never asked to stop it."""
        job = Scripted([], polls=1)
        ctl = control(tmp_path, job, clock)
        ctl.request_stop("cancel")
        clock.advance(11)
        assert ctl.poll() == 0
        ctl.tick()
        assert job.stops == []


class TestLaunch:
    def test_the_platform_output_arrives_as_output_events_of_its_own_writer(
        self, tmp_path: Path
    ) -> None:
        """Every line, in order, stdout and stderr apart, from one writer that closes cleanly."""
        lines = [("stdout", f"line {i}") for i in range(50)] + [("stderr", "oops")]
        result = launch(
            ["work"],
            launcher=ScriptedLauncher(Scripted(lines, code=3)),
            bus=str(tmp_path / "bus"),
            grace=5.0,
        )
        assert [(e.message.stream, e.message.text) for e in result.outputs] == [
            (stream, text + "\n") for stream, text in lines
        ]
        assert len(result.writers) == 1
        (writer,) = result.writers.values()
        assert writer.closed and writer.exception is None
        assert result.exit_code == 3 and result.exit_status() == 3
        assert result.job_state == "failed (done)"
        assert result.launch.launcher == "scripted" and result.launch.job_id == "j-1"

    def test_the_spec_carries_the_session_and_only_its_variables(self, tmp_path: Path) -> None:
        """The launcher gets the command plus the session's args, the session's env, the bus dir."""
        launcher = ScriptedLauncher(Scripted([]))
        launch(
            ["work", "--fast"],
            launcher=launcher,
            bus=str(tmp_path / "bus"),
            env={"LEVEL": "debug"},
            grace=5.0,
        )
        spec = launcher.spec
        assert spec is not None and list(spec.command[:2]) == ["work", "--fast"]
        assert spec.env["LEVEL"] == "debug" and "PIPES_BUS_SESSION" in spec.env
        assert "PATH" not in spec.env
        assert spec.bus_dir == str(tmp_path / "bus")

    def test_a_long_line_is_split_and_nothing_is_cut(self, tmp_path: Path) -> None:
        """A 100,000-character line arrives in MAX_LINE pieces that join back to it."""
        text = "".join(chr(97 + i % 26) for i in range(100_000 - 1))
        result = launch(
            ["work"],
            launcher=ScriptedLauncher(Scripted([("stdout", text)])),
            bus=str(tmp_path / "bus"),
            grace=5.0,
        )
        pieces = [e.message.text for e in result.outputs]
        assert len(pieces) == -(-100_000 // MAX_LINE) and "".join(pieces) == text + "\n"

    def test_output_over_the_bound_is_counted_and_reported(self, tmp_path: Path) -> None:
        """Past MAX_OUTPUT, lines are not forwarded: one warning says exactly how many."""
        line = "x" * 999  # 1,000 characters with its newline
        count = MAX_OUTPUT // 1000 + 500
        job = Scripted([("stdout", line)] * count)
        result = launch(
            ["work"], launcher=ScriptedLauncher(job), bus=str(tmp_path / "bus"), grace=5.0
        )
        forwarded = -(-MAX_OUTPUT // 1000)
        assert len(result.outputs) == forwarded
        (warning,) = [e.message for e in result.logs]
        assert warning.level == "warning"
        dropped = count - forwarded
        assert warning.message.startswith(f"{dropped} more lines ({dropped * 999} characters)")

    def test_a_memory_bus_is_refused(self) -> None:
        """Work launched from here cannot reach this process's memory: a one-line error."""
        from pipes_bus import ConfigurationError

        with pytest.raises(ConfigurationError, match="lives in this process's memory"):
            launch(["work"], launcher=ScriptedLauncher(Scripted([])), bus="memory://x")


class Refusing(Launcher):
    """A platform that refuses every job."""

    name = "refusing"

    def launch(self, spec: LaunchSpec) -> Job:
        from pipes_bus import LaunchError

        raise LaunchError("the image 'nope:1' does not exist on the engine")


def test_a_refused_launch_is_an_error_and_on_record(tmp_path: Path) -> None:
    """LaunchError reaches the caller; the session is recorded as failed, with the reason."""
    from pipes_bus import LaunchError
    from pipes_bus.orchestrator import list_sessions
    from pipes_bus.transports import open_transport

    bus = str(tmp_path / "bus")
    with pytest.raises(LaunchError, match="nope:1"):
        launch(["work"], launcher=Refusing(), bus=bus)
    (info,) = list_sessions(open_transport(bus))
    assert (info.state, info.status) == ("failed", 2)
    assert info.reason == (
        "the work could not be launched: the image 'nope:1' does not exist on the engine"
    )
