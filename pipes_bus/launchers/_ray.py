"""``ray``: the command as a Ray Job, through the Jobs API (``JobSubmissionClient``).

The submission id is derived from the session id, so that a second launch of the same
session is refused by Ray instead of running twice, and so that any process can find the
job again from the session's ``launch.json``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from ray.job_submission import JobStatus as RayState
from ray.job_submission import JobSubmissionClient

from pipes_bus._errors import ConfigurationError, LaunchError
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

__all__ = ["RayJob", "RayLauncher"]

LOGS_EVERY = 1.0  # seconds between two reads of the job's log (each read is the whole log)
MAX_LOG = 8 * 1024 * 1024  # characters of the log forwarded at most (then it is not read)
# Ray lets these override the address it is given; an explicit address must win.
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+(?:Error|Exception)): (.+?)\s*\.?\s*$")


class RayJob(Job):
    """A Ray Job, known by its submission id. Ray merges the entrypoint's stdout and
    stderr into one log: every line is forwarded as "stdout"."""

    def __init__(self, client: JobSubmissionClient, handle: LaunchHandle) -> None:
        self.client = client
        self.handle = handle
        self._last = JobStatus("pending")
        self._offset = 0  # characters of the log already returned
        self._read_at = 0.0
        self._drained = False  # the whole log of a finished job was returned
        self._log_error: str | None = None
        self._stop_wanted = False  # a stop Ray could not deliver yet (the job was pending)
        self._stopped = False  # asked to stop
        self._forced = False  # asked to stop by force

    @property
    def _where(self) -> str:
        return f"Ray at {self.handle.where}"

    def status(self) -> JobStatus:
        try:
            info = self.client.get_job_info(self.handle.job_id)
        except Exception as exc:
            text = _message(exc)
            if "does not exist" in text:
                self._last = JobStatus(
                    "unknown",
                    reason=f"{self._where} has no job {self.handle.job_id} (deleted, or the "
                    "cluster was restarted)",
                )
                return self._last
            return JobStatus(self._last.state, reason=f"could not ask {self._where}: {text}")
        self._last = _status(info)
        if self._stopped and self._last.state == "pending":
            # Ray holds the stop of a job waiting for resources, and ends the job the moment
            # it starts; a forced stop does not wait for that (it may be 15 min away).
            later = "Ray ends it as it starts, or fails it after RAY_JOB_START_TIMEOUT_SECONDS"
            self._last = (
                JobStatus("cancelled", 143, f"stopped while pending: {later}")
                if self._forced
                else JobStatus("pending", reason=f"asked to stop while pending: {later}")
            )
        if self._stop_wanted and not self._last.finished:
            with contextlib.suppress(Exception):
                self.stop()
        return self._last

    def output(self) -> list[OutputLine]:
        if self._drained:
            return []
        finished = self._last.finished
        now = time.monotonic()
        if not finished and (now - self._read_at < LOGS_EVERY or self._offset >= MAX_LOG):
            return []
        self._read_at = now
        try:
            text = self.client.get_job_logs(self.handle.job_id)
        except Exception as exc:
            message = f"pipes-bus: could not read the job's log from {self._where}: {_message(exc)}"
            if message == self._log_error:
                return []  # said once already
            self._log_error = message
            return [("stderr", message)]
        self._log_error = None
        new = text[self._offset :]
        if finished:
            self._drained = True
        elif "\n" in new:
            new = new[: new.rindex("\n") + 1]  # complete lines only, while it runs
        else:
            return []
        self._offset += len(new)
        lines = [line.removesuffix("\r") for line in new.split("\n")]
        if lines and lines[-1] == "":
            lines.pop()
        out: list[OutputLine] = [("stdout", line) for line in lines]
        if not finished and self._offset >= MAX_LOG:
            self._drained = True
            out.append(
                (
                    "stderr",
                    f"pipes-bus: the Ray job's log is over {MAX_LOG} characters; the rest is not "
                    f"forwarded (ray job logs {self.handle.job_id} --address "
                    f"{self.handle.where})",
                )
            )
        return out

    def stop(self, *, force: bool = False) -> None:
        # Ray has one stop: SIGTERM to the entrypoint and its children, then SIGKILL after
        # the cluster's RAY_JOB_STOP_WAIT_TIME_S (3 s); `force` cannot do more. A job still
        # pending may have no supervisor yet to take the stop (stop_job returns False): it
        # is sent again at each status() until one takes it.
        self._stopped = True
        self._forced = self._forced or force
        self._stop_wanted = not self.client.stop_job(self.handle.job_id)


class RayLauncher(Launcher):
    """Submits the command as a Ray Job.

    Options: ``address`` (the Jobs API, the dashboard's URL: ``http://HEAD:8265``;
    default $RAY_ADDRESS, else the cluster ``ray start`` runs on this machine),
    ``runtime_env`` (a Ray runtime environment; the session's variables are added to its
    ``env_vars``), ``entrypoint_num_cpus``, ``entrypoint_num_gpus``,
    ``entrypoint_resources``, ``metadata``, ``env`` (more variables, passed exactly),
    ``submission_id`` (default ``pipes-bus-{session}``; ``{session}`` is replaced).
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        runtime_env: Any = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_resources: Any = None,
        metadata: Any = None,
        env: Any = None,
        submission_id: str | None = None,
    ) -> None:
        self.option_address = address or None
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise ConfigurationError(
                'The \'runtime_env\' option must be a mapping, e.g. {"pip": ["numpy"]}.'
            )
        self.runtime_env: dict[str, Any] = dict(runtime_env or {})
        self.runtime_env_vars = as_env(
            self.runtime_env.pop("env_vars", None), "runtime_env.env_vars"
        )
        self.num_cpus = _number(entrypoint_num_cpus, "entrypoint_num_cpus")
        self.num_gpus = _number(entrypoint_num_gpus, "entrypoint_num_gpus")
        self.resources = as_resources(entrypoint_resources, "entrypoint_resources", '{"TPU": 1}')
        self.metadata = as_env(metadata, "metadata")
        self.env = as_env(env)
        if submission_id is not None and not (isinstance(submission_id, str) and submission_id):
            raise ConfigurationError("The 'submission_id' option must be a non-empty string.")
        self.submission_id = submission_id
        self._client: JobSubmissionClient | None = None

    def describe(self) -> str:
        return f"ray at {redact(self.address or '$RAY_ADDRESS (unset: the local cluster)')}"

    def _connect(self, address: str | None = None) -> JobSubmissionClient:
        """The Jobs API client for ``address`` (default: the launcher's), made once."""
        address = address or self.address
        if self._client is not None and (address is None or address == self.address):
            return self._client
        try:
            with _env_without(_ADDRESS_ENV if address else ()):
                client = JobSubmissionClient(address)
        except Exception as exc:
            raise LaunchError(
                f"Cannot reach Ray's Jobs API at {redact(address or '$RAY_ADDRESS (unset)')}: "
                f"{_message(exc)}. Check that the Ray head runs and that its dashboard "
                "(http://HEAD:8265 by default) is reachable from here; set it with "
                "-L address=... or $RAY_ADDRESS."
            ) from exc
        if address is None or address == self.address:
            self._client = client
        return client

    def launch(self, spec: LaunchSpec) -> RayJob:
        client = self._connect()
        where = redact(client.get_address())
        submission = (self.submission_id or "pipes-bus-{session}").replace(
            "{session}", spec.session
        )
        env = {**self.env, **spec.env}
        entrypoint, env_vars = entrypoint_and_env(spec.command, env, spec.cwd)
        runtime_env = {**self.runtime_env, "env_vars": {**self.runtime_env_vars, **env_vars}}
        try:
            client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission,
                runtime_env=runtime_env,
                metadata=self.metadata or None,
                entrypoint_num_cpus=self.num_cpus,
                entrypoint_num_gpus=self.num_gpus,
                entrypoint_resources=self.resources or None,
            )
        except ConnectionError as exc:
            raise LaunchError(
                f"Cannot reach Ray's Jobs API at {where}: {_message(exc)}. Check that the Ray "
                "head still runs."
            ) from exc
        except Exception as exc:
            raise LaunchError(
                f"Ray at {where} refused the job {submission}: {_message(exc)}."
            ) from exc
        handle = LaunchHandle(
            launcher=self.name,
            job_id=submission,
            where=where,
            extra={"dashboard": f"{where.rstrip('/')}/#/jobs/{submission}"},
        )
        return RayJob(client, handle)

    def attach(self, handle: LaunchHandle) -> RayJob:
        # The address given as an option, else the one the job was submitted to (then
        # $RAY_ADDRESS, which may name the same head from here under another name).
        tried = [self.option_address] if self.option_address else [handle.where, self.address]
        addresses = [a for i, a in enumerate(tried) if a and a not in tried[:i]]
        for address in addresses[:-1]:
            with contextlib.suppress(LaunchError):
                return RayJob(self._connect(address), handle)
        return RayJob(self._connect(addresses[-1] if addresses else None), handle)


def entrypoint_and_env(
    command: Sequence[str], env: Mapping[str, str], cwd: str | None = None
) -> tuple[str, dict[str, str]]:
    """Ray's entrypoint (a shell string: every word quoted) and ``env_vars`` for ``env``.

    Ray expands ``$NAME`` and ``${NAME}`` in every ``env_vars`` value (and deletes
    ``${NAME}`` when NAME is unset), so a value holding a ``$`` is sent as octal escapes,
    which have none, and the entrypoint's shell turns it back into itself before it runs
    the command."""
    env_vars: dict[str, str] = {}
    decode: list[str] = []
    for key, value in env.items():
        if "$" not in value:
            env_vars[key] = value
            continue
        if not _NAME.match(key):
            raise ConfigurationError(
                f"The variable {key!r} cannot reach a Ray job: its value holds a '$', which "
                "Ray would expand, and its name is not a shell name."
            )
        env_vars[key] = "".join(f"\\0{byte:03o}" for byte in value.encode())
        # printf %b decodes the escapes; the "x" keeps trailing newlines from $(...).
        decode.append(f'{key}="$(printf \'%bx\' "${key}")" && {key}="${{{key}%x}}" && export {key}')
    if cwd:
        decode.append(f"cd -- {shlex.quote(cwd)}")
    # exec: the words are a program and its arguments, never shell syntax (not even a
    # first word like "if" or "A=b"), and the command is the process Ray stops.
    return " && ".join([*decode, f"exec {shlex.join(list(command))}"]), env_vars


@contextlib.contextmanager
def _env_without(names: Iterable[str]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _status(info: Any) -> JobStatus:
    state = info.status
    message = (info.message or "").strip()
    if state == RayState.PENDING:
        return JobStatus("pending", reason=_first_line(message) or None)
    if state == RayState.RUNNING:
        return JobStatus("running")
    if state == RayState.SUCCEEDED:
        return JobStatus("succeeded", 0)
    if state == RayState.STOPPED:
        return JobStatus("cancelled", 143, _first_line(message) or "stopped")
    code = getattr(info, "driver_exit_code", None)
    exit_code = 1 if code is None else (128 - code if code < 0 else code)
    return JobStatus("failed", exit_code, _first_line(message) or "the Ray job failed")


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = line.split(", last available logs", 1)[0].rstrip(":")
    return line[:300]


def _message(exc: BaseException) -> str:
    """Ray's error in one line: the last ``...Error: text`` of a server traceback, if any."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip(" .")] or [text]
    found = [m.group(1) for line in lines if (m := _ERROR_LINE.match(line))]
    line = found[-1] if found else lines[-1]
    return redact(line.strip().rstrip("."))[:500]


def _number(value: Any, option: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(f"The {option!r} option must be a number (0 or more).")
    return value
