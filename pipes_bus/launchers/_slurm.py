"""``slurm``: the command as a Slurm batch job, through ``sbatch``, ``scontrol`` and ``scancel``.

The job script is written for the user in a private directory (``{output_dir}/{session}/``
with that option, else ``{bus}/{session}/slurm/`` when the bus is a directory, else a fresh
temporary directory): the session's environment as ``export NAME='value'`` lines, then the
command, ``exec``'d (under ``srun --label`` when ``ntasks`` > 1, so that each rank is a
writer of its own). The job's stdout and stderr go to two files beside it, which
:meth:`SlurmJob.output` tails. The state comes from ``scontrol show job -o`` (``sacct``
once the controller has forgotten the job); a polite stop is ``scancel`` (SIGTERM to every
process of the job, SIGKILL after the cluster's KillWait), a forced one ``scancel --batch
--signal=KILL`` (at once) then ``scancel``. The cluster is the one the Slurm commands find
(``$SLURM_CONF``). No Python binding is used (pyslurm does not build against every Slurm).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipes_bus._errors import ConfigurationError, LaunchError
from pipes_bus.launchers._base import (
    Job,
    JobState,
    JobStatus,
    Launcher,
    LaunchHandle,
    LaunchSpec,
    OutputLine,
    as_env,
    as_strings,
)

__all__ = ["SlurmJob", "SlurmLauncher"]

QUERY_TIMEOUT = 10.0  # seconds a scontrol, sacct or scancel may take (milliseconds, normally)
SUBMIT_TIMEOUT = 60.0  # sbatch retries an unreachable controller for a while
READ_LIMIT = 1024 * 1024  # bytes of one output file read per output() call
MAX_OUTPUT = 8 * 1024 * 1024  # what the driver forwards at most (launch.MAX_OUTPUT)
PARTIAL = 64 * 1024  # a line without its newline is handed out once this long

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TIME = re.compile(r"(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|unlimited|infinite)", re.IGNORECASE)
_STATES: dict[str, JobState] = {
    **dict.fromkeys(
        ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"),
        "pending",
    ),
    **dict.fromkeys(
        ("RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"),
        "running",
    ),
    "COMPLETED": "succeeded",
    **dict.fromkeys(
        (
            "FAILED",
            "OUT_OF_MEMORY",
            "TIMEOUT",
            "NODE_FAIL",
            "BOOT_FAIL",
            "DEADLINE",
            "PREEMPTED",
            "SPECIAL_EXIT",
        ),
        "failed",
    ),
    "CANCELLED": "cancelled",
}


def _cluster() -> str:
    """The cluster the Slurm commands reach from here, for messages."""
    conf = os.environ.get("SLURM_CONF")
    return f"the Slurm cluster of SLURM_CONF={conf}" if conf else "the default Slurm cluster"


def _said(text: str, program: str) -> str:
    """What a Slurm command printed on stderr, on one line, without its "sbatch: error:"."""
    lines = []
    for line in text.splitlines():
        line = re.sub(rf"^{program}: (error|fatal): ", "", line.strip()).removeprefix(
            f"{program}: "
        )
        if line and not line.startswith("Try "):
            lines.append(line)
    return "; ".join(lines) or "no message"


def _run(
    argv: list[str], env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """A Slurm command, its output captured; OSError or TimeoutExpired if it cannot run."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _exit_code(text: str) -> int:
    """Slurm's ``N:S`` as a shell sees it: N, or 128+S if signal S ended the script."""
    code, _, sig = text.partition(":")
    number, signum = int(code or 0), int(sig or 0)
    return 128 + signum if signum else number


def _outcome(state_text: str, exit_text: str | None, *, stopped: bool) -> JobStatus:
    """A JobStatus from Slurm's state (``CANCELLED by 0`` too) and ``N:S`` exit code."""
    word = state_text.split()[0].rstrip("+") if state_text.split() else "UNKNOWN"
    state = _STATES.get(word)
    if state is None:  # a state this Slurm added: not over until it says so
        return JobStatus("running", reason=f"Slurm says {state_text}")
    if state not in ("succeeded", "failed", "cancelled"):
        return JobStatus(state)
    code = _exit_code(exit_text) if exit_text and re.fullmatch(r"\d+:\d+", exit_text) else None
    if state == "cancelled" or (stopped and state == "failed"):
        # Cancelled while pending (0:0), or a trap that exited 0: scancel sends SIGTERM.
        return JobStatus("cancelled", code or 128 + signal.SIGTERM, state_text)
    if state == "failed":
        return JobStatus("failed", code or 1, state_text)
    return JobStatus("succeeded", code or 0)


@dataclass
class _Tail:
    """One output file of the job, read from where the last read stopped."""

    path: str
    stream: str
    offset: int = 0
    partial: bytes = b""

    def read(self, *, final: bool) -> list[OutputLine]:
        """The lines appended since the last read (one piece of the file; the rest next
        time). ``final``: the job has ended, so read to the end, and hand out a last line
        without its newline; past MAX_OUTPUT bytes the rest is skipped, and said so."""
        lines: list[bytes] = []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                while True:
                    data = fh.read(READ_LIMIT)
                    self.offset += len(data)
                    *complete, self.partial = (self.partial + data).split(b"\n")
                    lines += complete
                    if len(self.partial) >= PARTIAL:
                        lines.append(self.partial)
                        self.partial = b""
                    if not final or not data:
                        break
                    if self.offset >= MAX_OUTPUT:
                        skipped = fh.seek(0, os.SEEK_END) - self.offset
                        self.offset += skipped
                        if skipped:
                            note = f"pipes-bus: {skipped} more bytes of {self.path} not read"
                            lines.append(note.encode())
                        break
        except FileNotFoundError:  # the job has not started (Slurm creates the file then)
            pass
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return [
            (self.stream, line.removesuffix(b"\r").decode("utf-8", "replace")) for line in lines
        ]


class SlurmJob(Job):
    """A Slurm batch job: its state from ``scontrol``, its output from its two files."""

    def __init__(self, handle: LaunchHandle, env: dict[str, str] | None = None) -> None:
        self.handle = handle
        self._env = env  # None: this process's environment
        self._tails = [
            _Tail(handle.extra[name], name) for name in ("stdout", "stderr") if name in handle.extra
        ]
        self._last = JobStatus("pending")
        self._stopped = False

    @property
    def job_id(self) -> str:
        return self.handle.job_id

    def status(self) -> JobStatus:
        if self._last.finished:
            return self._last
        self._last = self._ask()
        return self._last

    def _ask(self) -> JobStatus:
        try:
            shown = _run(["scontrol", "show", "job", "-o", self.job_id], self._env, QUERY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._unsure(f"scontrol could not answer: {exc}")
        name = self.handle.extra.get("job_name")
        if name and shown.returncode == 0 and f" JobName={name} " not in shown.stdout:
            return JobStatus(
                "unknown",
                reason=f"Slurm job {self.job_id} is now another job (not named {name}): the "
                "cluster's job ids started again",
            )
        if shown.returncode == 0 and "JobState=" in shown.stdout:
            state = re.search(r"\bJobState=(\S+)", shown.stdout)
            code = re.search(r"\bExitCode=(\S+)", shown.stdout)
            status = _outcome(
                state.group(1) if state else "UNKNOWN",
                code.group(1) if code else None,
                stopped=self._stopped,
            )
            why = re.search(r"\bReason=(\S+)", shown.stdout)
            if status.state == "pending" and why and why.group(1) != "None":
                return JobStatus("pending", reason=f"waiting: {why.group(1)}")
            return status
        said = _said(shown.stderr, "scontrol")
        if "Invalid job id" not in said:  # the controller is down, or refused us
            return self._unsure(f"scontrol: {said}")
        return self._accounted(said)

    def _accounted(self, forgotten: str) -> JobStatus:
        """A job the controller no longer knows: what accounting (or the job completion
        log) recorded of it, else unknown."""
        tried = [f"scontrol: {forgotten}"]
        for extra in ([], ["-c"]):
            argv = ["sacct", *extra, "-X", "-j", self.job_id, "-n", "-P", "-o", "State,ExitCode"]
            try:
                done = _run(argv, self._env, QUERY_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                tried.append(f"sacct: {exc}")
                break
            rows = [r.split("|") for r in done.stdout.splitlines() if r.count("|") == 1]
            if done.returncode == 0 and rows:
                return _outcome(rows[0][0], rows[0][1], stopped=self._stopped)
            tried.append(f"sacct {' '.join(extra)}".strip() + f": {_said(done.stderr, 'sacct')}")
        return JobStatus(
            "unknown",
            reason=f"Slurm no longer knows job {self.job_id} ({'; '.join(tried)})",
        )

    def _unsure(self, why: str) -> JobStatus:
        """The last state known (never a finished one), with why it is not fresh."""
        return JobStatus(self._last.state, reason=f"could not ask {_cluster()}: {why}")

    def output(self) -> list[OutputLine]:
        final = self._last.finished
        return [line for tail in self._tails for line in tail.read(final=final)]

    def stop(self, *, force: bool = False) -> None:
        # scancel: SIGCONT and SIGTERM to every process of the job (the exec'd command, each
        # srun rank), then SIGKILL after the cluster's KillWait; a pending job is just
        # removed. `scancel --signal=KILL [--full]` is the same cancel on Slurm 22.05
        # (measured: SIGKILL only after KillWait); `--batch --signal=KILL` kills the batch
        # step (the command, or srun and with it the ranks) at once, and the plain scancel
        # after it cancels what is still pending or left.
        self._stopped = True
        calls = [["scancel", self.job_id]]
        if force:
            calls.insert(0, ["scancel", "--batch", "--signal=KILL", self.job_id])
        for argv in calls:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _run(argv, self._env, QUERY_TIMEOUT)


class SlurmLauncher(Launcher):
    """Submits the command as a batch job with ``sbatch`` (see the module doc).

    Options: ``partition``, ``time`` (a Slurm time string, or minutes), ``ntasks`` (1; more
    runs the command under ``srun``, one writer per rank), ``cpus_per_task``, ``gres``
    (``"gpu:1"``), ``sbatch`` (more sbatch arguments, after these), ``job_name`` (the
    session id), ``output_dir`` (where the job script and its output files go), ``env``
    (more variables, under the session's).
    """

    name = "slurm"

    def __init__(
        self,
        *,
        partition: str | None = None,
        time: str | int | None = None,
        ntasks: int = 1,
        cpus_per_task: int | None = None,
        gres: str | None = None,
        sbatch: Any = None,
        job_name: str | None = None,
        output_dir: str | None = None,
        env: Any = None,
    ) -> None:
        for option, value in (
            ("partition", partition),
            ("gres", gres),
            ("job_name", job_name),
            ("output_dir", output_dir),
        ):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ConfigurationError(f"The {option!r} option must be a non-empty string.")
        if isinstance(time, int) and not isinstance(time, bool) and time > 0:
            time = str(time)
        if time is not None and not (isinstance(time, str) and _TIME.fullmatch(time)):
            raise ConfigurationError(
                f"The 'time' option must be a Slurm time limit (minutes, HH:MM:SS, D-HH:MM, "
                f'"UNLIMITED"), e.g. "02:00:00"; not {time!r}.'
            )
        for option, count in (("ntasks", ntasks), ("cpus_per_task", cpus_per_task)):
            if count is not None and (
                not isinstance(count, int) or isinstance(count, bool) or count < 1
            ):
                raise ConfigurationError(
                    f"The {option!r} option must be a whole number, 1 or more."
                )
        self.partition = partition
        self.time = time
        self.ntasks = ntasks
        self.cpus_per_task = cpus_per_task
        self.gres = gres
        self.sbatch = as_strings(sbatch, "sbatch")
        self.job_name = job_name
        self.output_dir = output_dir
        self.env = as_env(env)
        _check_names(self.env, "the 'env' option")

    def describe(self) -> str:
        where = f"partition {self.partition}" if self.partition else "the default partition"
        tasks = f", {self.ntasks} tasks" if self.ntasks > 1 else ""
        return f"slurm ({where}{tasks})"

    def script(self, spec: LaunchSpec) -> str:
        """The job script for ``spec``: the environment as exports, then the command."""
        env = {**self.env, **spec.env}
        _check_names(env, "the session's environment")
        lines = [
            "#!/bin/bash",
            f"# Written by pipes-bus for session {spec.session}.",
            "# The variables are exported here, not given as sbatch --export=NAME=VALUE:",
            "# their values are JSON, and --export splits its list at every comma.",
        ]
        lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
        command = shlex.join(spec.command)
        # exec: the command is the batch step's process, so scancel's SIGTERM reaches it
        # first-hand and its exit status is the job's (N:0, or 0:S for a signal).
        if self.ntasks > 1:
            lines.append(f"exec srun --label {command}")
        else:
            lines.append(f"exec {command}")
        return "\n".join(lines) + "\n"

    def sbatch_args(self, spec: LaunchSpec, folder: Path) -> list[str]:
        """sbatch's arguments (but the script) for ``spec``, its files in ``folder``."""
        args = [
            "sbatch",
            "--parsable",
            f"--job-name={self.job_name or spec.session}",
            f"--output={folder / 'job.out'}",
            f"--error={folder / 'job.err'}",
            "--export=ALL",
            f"--ntasks={self.ntasks}",
        ]
        if spec.cwd:
            args.append(f"--chdir={spec.cwd}")
        for option, value in (
            ("partition", self.partition),
            ("time", self.time),
            ("cpus-per-task", self.cpus_per_task),
            ("gres", self.gres),
        ):
            if value is not None:
                args.append(f"--{option}={value}")
        return [*args, *self.sbatch]

    def _folder(self, spec: LaunchSpec) -> Path:
        """The job's private directory (0700): its script and its two output files."""
        if self.output_dir is not None:
            folder = Path(self.output_dir) / spec.session
        elif spec.bus_dir is not None:
            folder = Path(spec.bus_dir) / spec.session / "slurm"
        else:
            return Path(tempfile.mkdtemp(prefix=f"pipes-bus-sbatch-{spec.session}-"))
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise LaunchError(f"Cannot create the job's directory {folder}: {exc}.") from exc
        return folder

    def launch(self, spec: LaunchSpec) -> SlurmJob:
        text = self.script(spec)
        folder = self._folder(spec)
        path = folder / "job.sh"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except OSError as exc:
            raise LaunchError(f"Cannot write the job script {path}: {exc}.") from exc
        argv = [*self.sbatch_args(spec, folder), str(path)]
        conf = os.environ.get("SLURM_CONF")
        if conf and not os.path.isfile(conf):  # sbatch would retry reading it for 60 s
            raise LaunchError(
                f"SLURM_CONF={conf} names no file: point it at the cluster's slurm.conf, or "
                "unset it to use the default configuration."
            )
        try:
            done = _run(argv, None, SUBMIT_TIMEOUT)
        except FileNotFoundError:
            raise LaunchError(
                "sbatch is not on PATH: install Slurm's client commands (apt-get install "
                "slurm-client) and point SLURM_CONF at the cluster's slurm.conf, or launch from "
                "a login node."
            ) from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LaunchError(
                f"sbatch did not submit the job to {_cluster()}: {exc}. Check that slurmctld "
                "answers (sinfo)."
            ) from exc
        job_id = done.stdout.strip().split(";")[0]
        if done.returncode != 0 or not job_id.isdigit():
            said = _said(done.stderr, "sbatch") if done.stderr.strip() else done.stdout.strip()
            if "Unable to contact slurm controller" in said:
                raise LaunchError(
                    f"Cannot reach the controller of {_cluster()}: {said}. Check that "
                    "slurmctld is up and answers from here (sinfo)."
                )
            raise LaunchError(
                f"Slurm refused the job: {said} (sbatch exited {done.returncode}, "
                f"{_cluster()}). Check the launcher's options (-L partition=..., "
                "-L 'sbatch=[...]') against sinfo and the cluster's limits."
            )
        handle = LaunchHandle(
            launcher=self.name,
            job_id=job_id,
            where=os.environ.get("SLURM_CONF", ""),
            extra={
                "script": str(path),
                "stdout": str(folder / "job.out"),
                "stderr": str(folder / "job.err"),
                "job_name": self.job_name or spec.session,
                "partition": self.partition or "",
                "ntasks": str(self.ntasks),
            },
        )
        return SlurmJob(handle)

    def attach(self, handle: LaunchHandle) -> SlurmJob:
        if not handle.job_id.isdigit():
            raise LaunchError(f"{handle.job_id!r} is not a Slurm job id.")
        env = None
        if handle.where and "SLURM_CONF" not in os.environ and os.path.isfile(handle.where):
            env = {**os.environ, "SLURM_CONF": handle.where}  # the cluster it was launched on
        return SlurmJob(handle, env)


def _check_names(env: dict[str, str], what: str) -> None:
    bad = sorted(name for name in env if not _NAME.fullmatch(name))
    if bad:
        raise ConfigurationError(
            f"{', '.join(map(repr, bad))} in {what} cannot be exported by a job script: a "
            "variable's name is letters, digits and _, not starting with a digit."
        )
