"""The docker launcher on a private Docker Engine and a private Podman service.

TestDocker runs the whole end-to-end suite and the docker-specific checks: a missing
image, bad options, the environment, volumes/user/workdir, stop and kill, the log
stream, a takeover. TestPodman runs a representative subset: hello, cancel, a crash, a
job that dies before opening (its logs forwarded) and the environment. The rest is the
same code on the same API, and running it on both engines would take this file (one
xdist worker: --dist=loadfile) past ~2.5 minutes on 2 cores. After every test, no
container labelled ``pipes-bus.session`` is left, running or exited.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipes_bus import ConfigurationError, LaunchError
from pipes_bus.launchers import JobStatus, LaunchSpec, make_launcher
from pipes_bus.testing.platforms import (
    Platform,
    build_host_image,
    host_mounts,
    start_dockerd,
    start_podman,
)
from tests.helpers import cli
from tests.launchers.end_to_end import (
    WAIT,
    Case,
    LauncherEndToEnd,
    by_kind,
    need,
    new_session,
    read_events,
    script,
    wait_for,
)

# This checkout: the editable install's .pth files point into it, so the container needs it.
REPO = Path(__file__).resolve().parents[2]
LABEL = "pipes-bus.session"
OutputLine = tuple[str, str]  # (stream, text), as Job.output() gives them
MISSING = "pipes-bus-no-such-image:1"
# What each engine adds to the environment it is given (the image sets none).
ADDED = {
    "docker": {"PATH", "HOSTNAME", "HOME"},
    "podman": {"PATH", "HOSTNAME", "HOME", "TERM", "container"},
}
ATTACH = """
import json, sys
from pipes_bus.launchers import LaunchHandle, make_launcher
import msgspec
handle = msgspec.json.decode(open(sys.argv[1], "rb").read(), type=LaunchHandle)
job = make_launcher("docker", **json.loads(sys.argv[2])).attach(handle)
status = job.status()
job.close()
print(json.dumps([status.state, status.exit_code, status.reason]))
"""


@dataclass
class Engine:
    """A running engine: its platform, the host image imported into it, a client."""

    name: str
    platform: Platform
    image: str
    client: Any

    @property
    def host(self) -> str:
        return self.platform.env["DOCKER_HOST"]

    def labelled(self) -> list[Any]:
        """Every container with a session label, running or not."""
        return list(self.client.containers.list(all=True, filters={"label": LABEL}))


def _engine(name: str, start: Callable[[], Platform]) -> Iterator[Engine]:
    import docker

    platform = start()
    try:
        image = build_host_image(platform.env["DOCKER_HOST"])
        client = docker.DockerClient(base_url=platform.env["DOCKER_HOST"])
        try:
            yield Engine(name, platform, image, client)
        finally:
            client.close()
    finally:
        platform.stop()


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Engine]:
    """A private dockerd for this module, with the host image."""
    need("docker")
    yield from _engine("docker", start_dockerd)


@pytest.fixture(scope="module")
def podman() -> Iterator[Engine]:
    """A private Podman API service for this module, with the host image."""
    need("podman")
    yield from _engine("podman", start_podman)


def options(engine: Engine, tmp_path: Path, **more: Any) -> dict[str, Any]:
    """The launcher options that run this host's Python in the host image."""
    volumes = host_mounts(str(REPO), str(tmp_path))
    return {"image": engine.image, "volumes": volumes, "network": "host", **more}


def spec(tmp_path: Path, *command: str, env: dict[str, str] | None = None, **kw: Any) -> LaunchSpec:
    bus = tmp_path / "bus"
    bus.mkdir(exist_ok=True)
    session = new_session()[0]
    return LaunchSpec(
        command=list(command), env=env or {}, session=session, bus=str(bus), bus_dir=str(bus), **kw
    )


def finish(job: Any, timeout: float = 60.0) -> tuple[JobStatus, list[OutputLine]]:
    """Follow ``job`` to its end as the driver does: its final status, every output line."""
    lines: list[OutputLine] = []

    def over() -> bool:
        done = job.status().finished
        lines.extend(job.output())
        return bool(done)

    try:
        wait_for(over, timeout)
        return job.status(), lines
    finally:
        job.close()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


class _OnAnEngine(LauncherEndToEnd):
    """The suite on one engine: ``engine`` names it; nothing may be left after a test."""

    @pytest.fixture
    def engine(self) -> Engine:
        raise NotImplementedError

    @pytest.fixture
    def case(self, engine: Engine, tmp_path: Path) -> Case:
        return Case(
            "docker", options(engine, tmp_path), dict(engine.platform.env), str(tmp_path / "bus")
        )

    @pytest.fixture(autouse=True)
    def nothing_left(self, engine: Engine) -> Iterator[None]:
        """After the test: no container with a session label, running or exited."""
        yield
        left = engine.labelled()
        for container in left:
            container.remove(force=True)
        assert [c.name for c in left] == []

    def test_the_job_gets_exactly_the_sessions_environment(
        self, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The container's environment: the spec's, the env option's, what the engine adds; no host variable."""
        monkeypatch.setenv("PIPES_BUS_TEST_HOST_ONLY", "leaked")
        launcher = make_launcher(
            "docker",
            **options(engine, tmp_path, host=engine.host, env={"LEVEL": "debug", "A": "option"}),
        )
        job = launcher.launch(
            spec(tmp_path, "/usr/bin/env", env={"A": "session", "B": "2 $HOME;x"})
        )
        status, lines = finish(job)
        assert status == JobStatus("succeeded", 0)
        seen = dict(text.split("=", 1) for _, text in lines)
        assert set(seen) == {"A", "B", "LEVEL"} | ADDED[engine.name]
        assert (seen["A"], seen["B"], seen["LEVEL"]) == ("session", "2 $HOME;x", "debug")


class TestDocker(_OnAnEngine):
    """The whole suite, and the docker-specific checks, on a private dockerd."""

    @pytest.fixture
    def engine(self, dockerd: Engine) -> Engine:
        return dockerd

    def test_a_follower_in_another_process_attaches_and_reports_the_state(
        self, case: Case, engine: Engine, tmp_path: Path
    ) -> None:
        """attach() from launch.json, in new processes: running, then the exit (kept: remove=false); remove=true then removes it."""
        case.options["remove"] = False
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        run = case.popen(sys.executable, script(tmp_path, "wait.py", WAIT), events=out, more=args)
        handle_file = tmp_path / "handle.json"

        def attach(**opts: Any) -> list[Any]:  # as `pipes-bus cancel` does: no options
            proc = subprocess.run(
                [sys.executable, "-c", ATTACH, str(handle_file), json.dumps(opts)],
                capture_output=True,
                text=True,
                env={**os.environ, **case.env},
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            return list(json.loads(proc.stdout))

        try:
            wait_for(lambda: out.exists() and by_kind(read_events(out), "custom"))
            handle_file.write_bytes((Path(case.bus) / session / "launch.json").read_bytes())
            handle = case.handle(session)
            assert (handle.launcher, handle.where) == ("docker", engine.host)
            assert (handle.extra["engine"], handle.extra["image"]) == (engine.name, engine.image)
            assert handle.extra["session"] == session
            container = engine.client.containers.get(handle.job_id)
            assert container.labels[LABEL] == session
            assert attach() == ["running", None, None]
            done = cli("cancel", session, "--bus", case.bus, env=case.env)
            assert done.returncode == 0, done.stderr
            run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                run.wait()
        assert run.returncode == 7
        state, code, _ = attach()
        assert (state, code) in {("failed", 143), ("failed", 7)}
        assert len(engine.labelled()) == 1  # launched with remove=false; attaching keeps it
        job = make_launcher("docker", remove=True).attach(handle)
        assert job.status() == JobStatus(
            state, code, "ended by SIGTERM" if code == 143 else "exited 7"
        )
        job.close()
        assert engine.labelled() == []  # it read the end, then removed it
        job = make_launcher("docker").attach(handle)
        assert job.status() == JobStatus(
            "unknown", None, f"no container {handle.job_id[:12]} at {engine.host}: it was removed"
        )
        job.close()

    @pytest.mark.parametrize("pull", ["never", "missing"])
    def test_a_missing_image_is_exit_2_with_one_line_naming_it(
        self, case: Case, tmp_path: Path, pull: str
    ) -> None:
        """An image the engine lacks (pull never) or cannot pull (no registry): exit 2, one line naming it."""
        case.options.update(image=MISSING, pull=pull)
        proc = case.run(sys.executable, "-c", "pass", events=tmp_path / "events.jsonl")
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(
            f"pipes-bus: {'The image' if pull == 'never' else 'Cannot pull the image'} {MISSING} "
        )

    def test_an_unknown_or_bad_option_is_exit_2(self, case: Case, tmp_path: Path) -> None:
        """-L colour=... (no such option) and -L pull=sometimes: exit 2, one line each, no container."""
        for key, value in (("colour", "red"), ("pull", "sometimes")):
            case.options[key] = value
            proc = case.run(sys.executable, "-c", "pass", events=tmp_path / "events.jsonl")
            del case.options[key]
            assert proc.returncode == 2, proc.stderr
            assert len(proc.stderr.splitlines()) == 1, proc.stderr
            assert repr(value if key == "pull" else key) in proc.stderr

    def test_volumes_user_and_workdir_take_effect(self, dockerd: Engine, tmp_path: Path) -> None:
        """user, workdir and a read-only volume: the job's uid/gid, cwd, and what it can read and not write."""
        data = tmp_path / "data"
        data.mkdir()
        (data / "file.txt").write_text("from the host")
        opts = options(
            dockerd, tmp_path, host=dockerd.host, user="65534:65534", workdir="/work/elsewhere"
        )
        opts["volumes"] = [*opts["volumes"], f"{data}:/data:ro"]
        job = make_launcher("docker", **opts).launch(
            spec(
                tmp_path,
                *python("""
                    import os
                    print(os.getuid(), os.getgid(), os.getcwd())
                    print(open("/data/file.txt").read())
                    try:
                        open("/data/new.txt", "w")
                    except OSError as exc:
                        print(type(exc).__name__)
                """),
            )
        )
        status, lines = finish(job)
        assert status == JobStatus("succeeded", 0), lines
        assert lines == [
            ("stdout", "65534 65534 /work/elsewhere"),
            ("stdout", "from the host"),
            ("stdout", "OSError"),
        ]

    def test_output_keeps_stdout_and_stderr_apart_each_in_order(
        self, dockerd: Engine, tmp_path: Path
    ) -> None:
        """Interleaved stdout/stderr, a pause, bad UTF-8, 2,000 lines at the end, a last line without its newline: each line once, per stream in order."""
        launcher = make_launcher("docker", **options(dockerd, tmp_path, host=dockerd.host))
        job = launcher.launch(
            spec(
                tmp_path,
                *python("""
                    import os, time
                    for i in range(3):
                        os.write(1, b"out %d\\n" % i)
                        os.write(2, b"err %d\\n" % i)
                    time.sleep(1.5)
                    os.write(1, b"bad \\xff byte\\r\\nhalf ")
                    os.write(1, b"line\\n")
                    for i in range(1000):  # many frames in the last second: none twice
                        os.write(1, b"late %d\\n" % i)
                        os.write(2, b"late %d\\n" % i)
                    os.write(1, b"no newline")
                """),
            )
        )
        status, lines = finish(job)
        assert status == JobStatus("succeeded", 0)
        # The engine copies the two streams apart: their relative order is not kept.
        assert [text for stream, text in lines if stream == "stdout"] == [
            "out 0",
            "out 1",
            "out 2",
            "bad \ufffd byte",
            "half line",
            *[f"late {i}" for i in range(1000)],
            "no newline",
        ]
        assert [text for stream, text in lines if stream == "stderr"] == [
            "err 0",
            "err 1",
            "err 2",
            *[f"late {i}" for i in range(1000)],
        ]
        assert len(lines) == 2009

    def test_a_polite_stop_returns_at_once_and_a_kill_ends_the_job(
        self, dockerd: Engine, tmp_path: Path
    ) -> None:
        """stop() returns at once (docker stop waits on its own thread); stop(force=True) kills: cancelled, 137."""
        launcher = make_launcher("docker", **options(dockerd, tmp_path, host=dockerd.host))
        job = launcher.launch(
            spec(
                tmp_path,
                *python("""
                    import signal, time
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    print("ready", flush=True)
                    while True:
                        time.sleep(0.05)
                """),
                grace=60.0,
            )
        )
        lines: list[OutputLine] = []
        wait_for(lambda: lines.extend(job.output()) or bool(lines))
        assert lines == [("stdout", "ready")]
        began = time.monotonic()
        job.stop()
        assert time.monotonic() - began < 1.0
        assert job.status().state == "running"
        job.stop(force=True)
        status, rest = finish(job)
        assert status == JobStatus("cancelled", 137, "killed (docker kill)")
        assert rest == []

    def test_a_command_that_cannot_start_is_a_launch_error(
        self, dockerd: Engine, tmp_path: Path
    ) -> None:
        """init=false and a program the image lacks: LaunchError naming it; nothing left behind."""
        launcher = make_launcher(
            "docker", **options(dockerd, tmp_path, host=dockerd.host, init=False)
        )
        with pytest.raises(LaunchError, match="could not start 'no-such-program' in the image"):
            launcher.launch(spec(tmp_path, "no-such-program"))

    def test_gpus_on_an_engine_without_them_is_a_launch_error(
        self, dockerd: Engine, tmp_path: Path
    ) -> None:
        """gpus=1 becomes a device request; this engine has no GPU driver, and says so in the LaunchError."""
        launcher = make_launcher("docker", **options(dockerd, tmp_path, host=dockerd.host, gpus=1))
        with pytest.raises(
            LaunchError,
            match='could not select device driver "" with capabilities: \\[\\[gpu\\]\\]',
        ):
            launcher.launch(spec(tmp_path, "true"))


class TestPodman(_OnAnEngine):
    """hello, cancel, a crash, an early death and the environment on Podman's Docker API
    (the other tests run on Docker only: see the module docstring)."""

    @pytest.fixture
    def engine(self, podman: Engine) -> Engine:
        return podman

    # On Docker only (the same code path; see the module docstring): not collected here.
    test_a_burst_of_100000_arrives_exactly_once_in_order = None
    test_a_timeout_cancels_and_stops_the_job = None
    test_a_bash_script_reports_through_exec = None


class TestOptions:
    """The options, checked before any engine is asked (one-line ConfigurationErrors)."""

    @pytest.mark.parametrize(
        ("given", "says"),
        [
            ({"image": ""}, "'image' option is an image name"),
            ({"image": "x", "pull": "often"}, "'pull' option is one of missing, always, never"),
            ({"image": "x", "volumes": ["/data"]}, '"host:container[:mode]" strings'),
            ({"image": "x", "volumes": "a:b"}, "'a:b' is not one"),
            ({"image": "x", "gpus": 0}, 'a count (1 or more) or "all"'),
            ({"image": "x", "remove": "yes"}, "'remove' option is true or false"),
            ({"image": "x", "env": {"A": 1}}, "'env' option must map names to strings"),
            ({"image": "x", "workdir": "rel"}, "absolute path"),
        ],
    )
    def test_a_bad_option_is_one_clear_line(self, given: dict[str, Any], says: str) -> None:
        """Each bad option: a ConfigurationError of one line saying what is expected."""
        with pytest.raises(ConfigurationError) as err:
            make_launcher("docker", **given)
        assert says in str(err.value)
        assert "\n" not in str(err.value)

    def test_no_image_is_refused_at_launch_not_at_attach(self, tmp_path: Path) -> None:
        """With no options the launcher is built (a follower attaches so); launch() asks for an image."""
        with pytest.raises(ConfigurationError, match="needs an image to launch: -L image="):
            make_launcher("docker").launch(spec(tmp_path, "true"))

    @pytest.mark.filterwarnings("ignore::ResourceWarning")
    def test_an_unreachable_engine_is_a_launch_error_naming_it(self, tmp_path: Path) -> None:
        """host= a socket nobody serves: LaunchError naming the address and what to check."""
        launcher = make_launcher("docker", image="x", host=f"unix://{tmp_path}/none.sock")
        with pytest.raises(LaunchError) as err:
            launcher.launch(spec(tmp_path, "true"))
        text = str(err.value)
        assert text.startswith(
            f"Cannot reach the container engine at unix://{tmp_path}/none.sock: "
        )
        assert "DOCKER_HOST" in text and "\n" not in text
        del err
        gc.collect()  # docker-py leaves the socket of a failed connect open: closed here, quietly

    def test_describe_names_the_engine_address(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """describe(): the host option, else $DOCKER_HOST, else the SDK's default socket."""
        monkeypatch.delenv("DOCKER_HOST", raising=False)
        assert (
            make_launcher("docker", image="x").describe() == "docker at unix:///var/run/docker.sock"
        )
        monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
        assert make_launcher("docker", image="x").describe() == "docker at tcp://10.0.0.1:2375"
        assert (
            make_launcher("docker", image="x", host="unix:///a.sock").describe()
            == "docker at unix:///a.sock"
        )
