"""``dask``: the command as tasks on a ``dask.distributed`` cluster.

Each task runs the command as a subprocess of its Dask worker, in a process group of its
own, and returns its exit status and the tail of its output. Dask cannot interrupt a
running task, so each task also watches two Dask Events named after the session: the
first makes it send SIGTERM to its command's process group, the second SIGKILL. Without
an ``address`` the launcher starts a LocalCluster for the run and closes it with the job.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import distributed

from pipes_bus._errors import ConfigurationError, LaunchError
from pipes_bus._groups import signal_group
from pipes_bus._redact import redact
from pipes_bus.launchers._base import (
    Job,
    JobStatus,
    Launcher,
    LaunchHandle,
    LaunchSpec,
    OutputLine,
    as_env,
    as_resources,
)

__all__ = ["DaskJob", "DaskLauncher", "run_command"]

# What a task keeps of its command's output (the last lines), and the longest line.
TAIL_LINES = 1000
TAIL_CHARS = 256 * 1024
MAX_LINE = 16 * 1024
CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler
POLL = 0.5  # seconds of each long poll of a task on its stop events
LABEL_ENV, TASK_ENV, TASKS_ENV = "PIPES_BUS_LABEL", "PIPES_BUS_TASK", "PIPES_BUS_TASKS"

# distributed is only partly typed (untyped calls): its objects are Any here.
dd: Any = distributed

# A task's result: (exit status, [(stream, line), ...] the tail of its output, lines dropped)
Result = tuple[int, list[tuple[str, str]], int]


# --- the task, on a Dask worker -------------------------------------------------------------


class _Tail:
    """The last lines of a command's output, bounded in lines and characters."""

    def __init__(self) -> None:
        self.lines: collections.deque[tuple[str, str]] = collections.deque()
        self.chars = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def read(self, stream: str, pipe: IO[bytes]) -> None:
        with pipe:
            while chunk := pipe.readline(MAX_LINE):
                text = chunk.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
                with self.lock:
                    self.lines.append((stream, text))
                    self.chars += len(text)
                    while len(self.lines) > TAIL_LINES or self.chars > TAIL_CHARS:
                        self.chars -= len(self.lines.popleft()[1])
                        self.dropped += 1


def run_command(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    stop_name: str,
    kill_name: str,
) -> Result:
    """One task (on a Dask worker): ``command`` as a subprocess in a process group of its
    own, with this worker's environment under ``env``; SIGTERM to the group when the
    Event ``stop_name`` is set, SIGKILL when ``kill_name`` is. Whatever the command left
    in its group when it exits is killed. Returns its exit status (128+S for signal S)
    and the tail of its output."""
    client = dd.get_client()
    stop, kill = dd.Event(stop_name, client=client), dd.Event(kill_name, client=client)
    if stop.is_set():
        return 143, [("stderr", "pipes-bus: stopped before it started")], 0
    proc = subprocess.Popen(
        list(command),
        env={**os.environ, **env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    tail = _Tail()
    readers = [
        threading.Thread(target=tail.read, args=(name, pipe), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    done = threading.Event()

    def watch() -> None:
        # Event.wait is a long poll on the scheduler: it returns as soon as the event is set.
        for event, sig in ((stop, signal.SIGTERM), (kill, signal.SIGKILL)):
            while not done.is_set():
                try:
                    is_set = event.wait(timeout=POLL)
                except Exception:  # the scheduler is out of reach, or closing: ask again
                    done.wait(POLL)
                    continue
                if is_set:
                    if not done.is_set():
                        signal_group(proc.pid, sig)
                    break

    watcher = threading.Thread(target=watch, daemon=True)
    for thread in [*readers, watcher]:
        thread.start()
    if hasattr(os, "waitid"):  # Linux: wait without reaping, so that the group's id
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # is not reused before...
    else:
        proc.wait()
    done.set()
    signal_group(proc.pid, signal.SIGKILL)  # ...what it left behind in its group is killed
    code = proc.wait()
    watcher.join(timeout=POLL + 5.0)  # so that no wait of it outlives the task
    for thread in readers:
        thread.join(timeout=5.0)  # a process that left the group may hold the pipes
    with tail.lock:
        lines, dropped = list(tail.lines), tail.dropped
    if any(thread.is_alive() for thread in readers):
        lines.append(
            ("stderr", "pipes-bus: a process outside the command's group kept its output open")
        )
    return (128 - code if code < 0 else code), lines, dropped


# --- the orchestrator's side ----------------------------------------------------------------


class DaskJob(Job):
    """The tasks of one launch, as futures. Dask returns a task's output when it ends, not
    as it comes: output() gives each finished task's tail once."""

    def __init__(
        self,
        client: Any,
        futures: list[Any],
        handle: LaunchHandle,
        cluster: Any = None,
    ) -> None:
        self.client = client
        self.futures = futures
        self.handle = handle
        self.cluster = cluster
        self._results: dict[int, Result] = {}
        self._errors: dict[int, str] = {}
        self._reported: set[int] = set()
        self._stopping = False
        self._started = False
        self._status = JobStatus("pending")

    def _busy(self) -> set[Any]:
        """Keys the scheduler has given to a worker (running, or about to)."""
        return {key for keys in self.client.processing().values() for key in keys}

    @property
    def _events(self) -> tuple[Any, Any]:
        name, client = self.handle.job_id, self.client
        return dd.Event(f"{name}-stop", client=client), dd.Event(f"{name}-kill", client=client)

    def _collect(self) -> None:
        """Fetch what newly finished tasks returned, or why they failed."""
        for index, future in enumerate(self.futures):
            if index in self._results or index in self._errors or not future.done():
                continue
            if future.status == "finished":
                try:
                    self._results[index] = future.result(timeout=CONNECT_TIMEOUT)
                except Exception as exc:
                    self._errors[index] = f"its result could not be fetched: {_one_line(exc)}"
            elif future.status == "error":
                self._errors[index] = f"raised {_one_line(future.exception())}"
            else:  # cancelled, lost
                self._errors[index] = future.status

    def status(self) -> JobStatus:
        if self._status.finished:
            return self._status
        self._collect()
        if not all(future.done() for future in self.futures):
            if not self._started:
                busy = self._busy()
                self._started = bool(self._results or self._errors) or any(
                    future.key in busy for future in self.futures
                )
            return JobStatus("running" if self._started else "pending")
        self._status = self._outcome()
        return self._status

    def _stop_was_set(self) -> bool:
        """Whether a stop came from elsewhere (another process attached to the job)."""
        try:
            return bool(self._events[0].is_set())
        except Exception:
            return False

    def _outcome(self) -> JobStatus:
        codes = [(i, self._results[i][0]) for i in sorted(self._results)]
        failed = [(i, code) for i, code in codes if code != 0]
        if not failed and not self._errors:
            return JobStatus("succeeded", 0)
        first = failed[0][1] if failed else None
        why = [f"task {i} exited {code}" for i, code in failed]
        why += [f"task {i} {text}" for i, text in sorted(self._errors.items())]
        reason = "; ".join(why) if len(self.futures) > 1 else why[0].removeprefix("task 0 ")
        if self._stopping or "cancelled" in self._errors.values() or self._stop_was_set():
            return JobStatus("cancelled", first or 143, reason[:500])
        return JobStatus("failed", first or 1, reason[:500])

    def output(self) -> list[OutputLine]:
        self._collect()
        many = len(self.futures) > 1
        lines: list[OutputLine] = []
        for index in sorted(set(self._results) - self._reported):
            self._reported.add(index)
            _, tail, dropped = self._results[index]
            prefix = f"[task {index}] " if many else ""
            if dropped:
                text = f"pipes-bus: {prefix}{dropped} earlier lines of output were not kept"
                lines.append(("stderr", text))
            lines += [(stream, prefix + text) for stream, text in tail]
        return lines

    def stop(self, *, force: bool = False) -> None:
        self._stopping = True
        stop, kill = self._events
        stop.set()  # tasks running get SIGTERM, tasks that start later do not run
        if force:
            kill.set()
        busy = self._busy()
        for future in self.futures:
            if not future.done() and future.key not in busy:
                future.cancel()  # not started: it never will be

    def close(self) -> None:
        try:
            finished = self.status().finished
        except Exception:
            finished = False
        if self.cluster is None:
            if finished:  # collected: a follower attaching now finds nothing
                with contextlib.suppress(Exception):
                    self.client.unpublish_dataset(self.handle.job_id)
                for event in self._events:
                    with contextlib.suppress(Exception):
                        event.clear()
            self.client.close()
            return
        if not finished:  # the cluster closes now: end the commands first
            with contextlib.suppress(Exception):
                self.stop(force=True)
                deadline = time.monotonic() + 5.0
                while not all(f.done() for f in self.futures) and time.monotonic() < deadline:
                    time.sleep(0.1)
        with contextlib.suppress(Exception):
            self.client.close()
        self.cluster.close()


class _Collected(Job):
    """A launch the scheduler no longer holds: collected once it finished."""

    def __init__(self, handle: LaunchHandle) -> None:
        self.handle = handle

    def status(self) -> JobStatus:
        return JobStatus(
            "unknown",
            reason=f"the scheduler at {self.handle.where} no longer holds it (collected "
            "when it finished, or the scheduler restarted)",
        )

    def stop(self, *, force: bool = False) -> None:
        pass


class DaskLauncher(Launcher):
    """Runs the command as ``tasks`` tasks on a Dask cluster.

    Options: ``address`` (a scheduler, ``tcp://HOST:8786``; default: a LocalCluster
    started here for the run, one single-threaded worker process per task, closed when
    the job ends), ``tasks`` (copies of the command, 1), ``resources`` (Dask resources
    each task needs, e.g. ``{"GPU": 1}``), ``env`` (more variables).
    """

    name = "dask"

    def __init__(
        self,
        *,
        address: str | None = None,
        tasks: int = 1,
        resources: Any = None,
        env: Any = None,
    ) -> None:
        if address is not None and not (isinstance(address, str) and address):
            raise ConfigurationError(
                "The 'address' option must be a scheduler address, e.g. tcp://HOST:8786."
            )
        if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
            raise ConfigurationError("The 'tasks' option must be a whole number, 1 or more.")
        self.address = address
        self.tasks = tasks
        self.resources = as_resources(resources, "resources", '{"GPU": 1}')
        self.env = as_env(env)

    def describe(self) -> str:
        if self.address:
            return f"dask at {redact(self.address)}"
        return f"dask on a LocalCluster here ({self.tasks} worker process(es))"

    def _connect(self, address: str) -> Any:
        try:
            _refused(address)  # at once, rather than after Dask's retries
            return dd.Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
        except Exception as exc:
            raise LaunchError(
                f"Cannot reach the Dask scheduler at {redact(address)}: {_one_line(exc)}. Check "
                "that it runs and that this host can reach it (the scheduler prints its "
                "address: tcp://HOST:8786)."
            ) from exc

    def _local_cluster(self) -> Any:
        import dask

        try:
            # A task whose worker dies fails, instead of running the command again elsewhere.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                return dd.LocalCluster(
                    n_workers=self.tasks,
                    threads_per_worker=1,
                    processes=True,
                    resources=self.resources or None,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
        except Exception as exc:
            raise LaunchError(
                f"Could not start a Dask LocalCluster here: {_one_line(exc)}."
            ) from exc

    def launch(self, spec: LaunchSpec) -> DaskJob:
        name = f"pipes-bus-{spec.session}"
        cluster = None
        if self.address:
            client = self._connect(self.address)
            if name in client.list_datasets():
                client.close()
                raise LaunchError(
                    f"The Dask scheduler at {redact(self.address)} already holds a launch of "
                    f"session {spec.session} ({name}): a session is launched once."
                )
            where = redact(self.address)
        else:
            cluster = self._local_cluster()
            client = dd.Client(cluster, set_as_default=False)
            where = cluster.scheduler_address
        env = {**self.env, **spec.env}
        try:
            futures = [
                client.submit(
                    run_command,
                    list(spec.command),
                    task_env(env, index, self.tasks),
                    spec.cwd,
                    f"{name}-stop",
                    f"{name}-kill",
                    key=f"{name}-{index}",
                    pure=False,
                    resources=self.resources or None,
                )
                for index in range(self.tasks)
            ]
            if cluster is None:  # held by the scheduler, so that another process can attach
                client.publish_dataset(futures, name=name)
        except Exception as exc:
            client.close()
            if cluster is not None:
                cluster.close()
            raise LaunchError(f"The Dask scheduler at {where} refused the tasks: {exc}.") from exc
        extra = {"tasks": str(self.tasks), "cluster": "external" if cluster is None else "private"}
        if cluster is not None:
            extra.update(pid=str(os.getpid()), host=socket.gethostname())
        handle = LaunchHandle(launcher=self.name, job_id=name, where=where, extra=extra)
        return DaskJob(client, futures, handle, cluster)

    def attach(self, handle: LaunchHandle) -> Job:
        if handle.extra.get("cluster") == "private":
            raise LaunchError(
                f"The Dask job {handle.job_id} ran on a LocalCluster private to the run that "
                f"launched it (pid {handle.extra.get('pid')} on {handle.extra.get('host')}); "
                "it closes with that run, so there is nothing to attach to: only the bus can "
                "say more (pipes-bus status)."
            )
        client = self._connect(self.address or handle.where)
        try:
            futures = client.get_dataset(handle.job_id)
        except KeyError:
            client.close()
            return _Collected(handle)
        return DaskJob(client, list(futures), handle)


def task_env(env: Mapping[str, str], index: int, tasks: int) -> dict[str, str]:
    """A task's variables: ``env``, its index and the number of tasks, and a label that
    tells its writer apart (``task-N``, unless ``env`` names one)."""
    out = {**env, TASK_ENV: str(index), TASKS_ENV: str(tasks)}
    out.setdefault(LABEL_ENV, f"task-{index}")
    return out


def _refused(address: str) -> None:
    """Raise ConnectionRefusedError if nothing listens at a ``tcp://`` address."""
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rpartition(":")
    if scheme in ("", "tcp") and host and port.isdigit():
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "an unknown error"
    text = " ".join(str(exc).split())
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:300]
