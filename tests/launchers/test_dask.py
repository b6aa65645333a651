"""The dask launcher through the launchers' end-to-end suite: on the LocalCluster it starts
for each run, and on an external cluster that outlives the runs (attach, stop from afar)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipes_bus import LaunchError
from pipes_bus.launchers import LaunchHandle, LaunchSpec, make_launcher
from tests.helpers import cli
from tests.launchers.end_to_end import (
    REQUIRE_ENV,
    Case,
    LauncherEndToEnd,
    by_kind,
    mine,
    new_session,
    read_events,
    script,
    wait_for,
)


def need_dask() -> None:
    """As ``need``: skip (fail under .ci/run) with one line if distributed is missing."""
    if importlib.util.find_spec("distributed") is not None:
        return
    hint = "dask.distributed is not installed: pip install 'pipes-bus[dask]'"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"dask is required here ({REQUIRE_ENV} is set): {hint}")
    pytest.skip(hint)


def commands_running(text: str) -> list[int]:
    """Pids of the live processes (zombies aside) whose command line mentions ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(entry))
    return found


@dataclass
class DaskCase(Case):
    """A Case whose job is over when Dask says so, or, for a private LocalCluster (which
    ends with its run, so that nothing can attach to it), when no command of the test's
    directory still runs anywhere."""

    def finished(self, handle: LaunchHandle) -> bool:
        if commands_running(str(Path(self.bus).parent)):
            return False
        if handle.extra.get("cluster") == "private":
            with pytest.raises(LaunchError, match="private to the run"):
                make_launcher(self.launcher, **self.options).attach(handle)
            return True
        return super().finished(handle)


@pytest.fixture
def case(tmp_path: Path) -> Case:
    """The launcher's own LocalCluster, one per run."""
    need_dask()
    return DaskCase("dask", {}, {}, str(tmp_path / "bus"))


CLUSTER = """
import json, logging, sys
from distributed import Client, LocalCluster
if __name__ == "__main__":
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    with Client(cluster) as client:
        pids = list(client.run(lambda: __import__("os").getpid()).values())
    print(json.dumps({"address": cluster.scheduler_address, "workers": pids}), flush=True)
    sys.stdin.read()  # until the test closes it
    cluster.close()
"""


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A LocalCluster in a process of its own, outliving the runs: its address, its workers."""
    need_dask()
    path = tmp_path_factory.mktemp("cluster") / "cluster.py"
    path.write_text(CLUSTER)
    holder = subprocess.Popen(
        [sys.executable, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        yield {**json.loads(holder.stdout.readline()), "pid": holder.pid}
    finally:
        holder.stdin.close()
        holder.stdout.close()
        try:
            holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def children(pids: list[int]) -> list[int]:
    """Live processes whose parent is one of ``pids``."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) in pids and fields[0] != "Z":
            out.append(int(entry))
    return out


TASKS = """
import os
import pipes_bus
with pipes_bus.open_worker() as worker:
    task = int(os.environ["PIPES_BUS_TASK"])
    for i in range(2000):
        worker.report_custom_message({"task": task, "of": os.environ["PIPES_BUS_TASKS"], "i": i})
"""
WAIT = """
import time
import pipes_bus
with pipes_bus.open_worker() as worker:
    worker.report_custom_message({"ready": True})
    while True:
        time.sleep(0.05)
"""
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]])
print("ignoring SIGTERM", flush=True)
while True:
    time.sleep(0.05)
"""


class TestDask(LauncherEndToEnd):
    """Tasks on the LocalCluster the launcher starts for the run (options {})."""

    def test_two_tasks_are_two_writers_and_every_message_arrives_once(
        self, case: Case, tmp_path: Path
    ) -> None:
        """tasks=2: two writers labelled task-0 and task-1, each message exactly once, in order."""
        out = tmp_path / "events.jsonl"
        two = DaskCase("dask", {"tasks": 2}, {}, case.bus)
        proc = two.run(sys.executable, script(tmp_path, "tasks.py", TASKS), events=out)
        assert proc.returncode == 0, proc.stderr
        events = mine(read_events(out))
        opened = {e["writer"]: e["info"]["label"] for e in by_kind(events, "opened")}
        assert sorted(opened.values()) == ["task-0", "task-1"]
        for writer, label in opened.items():
            payloads = [e["payload"] for e in by_kind(events, "custom") if e["writer"] == writer]
            task = int(label.removeprefix("task-"))
            assert payloads == [{"task": task, "of": "2", "i": i} for i in range(2000)]

    def test_a_command_that_ignores_sigterm_is_killed_with_its_children(
        self, case: Case, tmp_path: Path
    ) -> None:
        """--timeout on a command that ignores SIGTERM and the bus, with a child: after the
        grace SIGTERM, then SIGKILL to its group; exit 7, nothing of it left."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        stubborn = script(tmp_path, "stubborn.py", STUBBORN)
        more = ("--timeout", "3", "--grace", "1", *args)
        proc = case.run(sys.executable, stubborn, str(tmp_path), events=out, more=more)
        assert proc.returncode == 7, proc.stderr
        assert "the platform says cancelled (exited 137)" in proc.stderr
        texts = [(e["stream"], e["text"]) for e in by_kind(read_events(out), "output")]
        assert texts == [("stdout", "ignoring SIGTERM\n")]
        assert case.finished(case.handle(session))

    def test_a_private_cluster_cannot_be_attached_to(self, case: Case, tmp_path: Path) -> None:
        """The handle of a run on its own LocalCluster: attach says the cluster went with it."""
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        proc = case.run(sys.executable, "-c", "pass", events=out, more=args)
        assert proc.returncode == 0, proc.stderr
        handle = case.handle(session)
        assert (handle.launcher, handle.job_id) == ("dask", f"pipes-bus-{session}")
        assert handle.where.startswith("tcp://127.0.0.1:")
        assert handle.extra == {
            "tasks": "1",
            "cluster": "private",
            "pid": handle.extra["pid"],
            "host": os.uname().nodename,
        }
        with pytest.raises(LaunchError, match=r"LocalCluster private to the run .* \(pid \d+ on"):
            make_launcher("dask").attach(handle)

    def test_an_external_cluster_is_attached_to_and_stopped_from_afar(
        self, external: dict[str, Any], tmp_path: Path
    ) -> None:
        """A run on an external cluster: another process attaches (running), stops it; the
        command is gone from the workers, the run ends, a second attach finds it collected."""
        address = external["address"]
        ext = DaskCase("dask", {"address": address}, {}, str(tmp_path / "bus"))
        out, (session, args) = tmp_path / "events.jsonl", new_session()
        run = ext.popen(sys.executable, script(tmp_path, "wait.py", WAIT), events=out, more=args)
        try:
            wait_for(lambda: out.exists() and by_kind(read_events(out), "custom"))
            handle = ext.handle(session)
            assert (handle.where, handle.extra) == (address, {"tasks": "1", "cluster": "external"})
            job = make_launcher("dask", address=address).attach(handle)
            try:
                assert job.status().state == "running"
                [command] = [
                    p for p in children(external["workers"]) if p in commands_running("wait.py")
                ]
                job.stop()
                _, stderr = run.communicate(timeout=120)
            finally:
                job.close()
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                run.wait()
        assert run.returncode == 143, stderr
        assert "the platform says cancelled (exited 143)" in stderr
        assert command not in children(external["workers"])
        assert not commands_running(str(tmp_path))
        again = make_launcher("dask", address=address).attach(handle)
        assert again.status().state == "unknown"

    def test_a_second_launch_of_a_session_is_refused(
        self, external: dict[str, Any], tmp_path: Path
    ) -> None:
        """On an external cluster a session's launch is held by name: launching it again is a
        LaunchError, not a second copy of the work."""
        launcher = make_launcher("dask", address=external["address"])
        spec = LaunchSpec([sys.executable, "-c", "pass"], {}, new_session()[0], str(tmp_path))
        job = launcher.launch(spec)
        try:
            with pytest.raises(LaunchError, match="already holds a launch of session"):
                launcher.launch(spec)
            wait_for(lambda: job.status().finished, timeout=60)
            assert job.status().state == "succeeded"
        finally:
            job.close()

    def test_an_unreachable_scheduler_is_exit_2_in_one_line(
        self, case: Case, tmp_path: Path
    ) -> None:
        """No scheduler at the address: exit 2, one line that names it."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        options = ("--launcher", "dask", "-L", f"address={json.dumps(address)}")
        proc = cli("run", "--bus", case.bus, *options, "--", sys.executable, "-c", "pass")
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
        assert address in proc.stderr


def test_the_task_environment_labels_each_writer() -> None:
    """Each task gets its index, the count, and a label unless the env names one."""
    need_dask()
    from pipes_bus.launchers._dask import task_env

    assert task_env({"A": "1"}, 1, 3) == {
        "A": "1",
        "PIPES_BUS_TASK": "1",
        "PIPES_BUS_TASKS": "3",
        "PIPES_BUS_LABEL": "task-1",
    }
    assert task_env({"PIPES_BUS_LABEL": "mine"}, 0, 1)["PIPES_BUS_LABEL"] == "mine"
