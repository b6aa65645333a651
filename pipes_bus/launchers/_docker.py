"""``docker``: the command in a container, on Docker Engine or Podman (through docker-py).

The container gets exactly the session's environment (plus the ``env`` option), never
this host's; a directory bus is mounted at the same path, read-write; every container is
labelled ``pipes-bus.session=<id>``. Its logs are read on one background thread per job
(one multiplexed stream: stdout and stderr stay apart, each in order), and handed out by
:meth:`DockerJob.output`. Once the container has exited and its log stream has ended, the
container is removed (``remove=True``): the SDK's ``auto_remove`` would lose the exit code.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import math
import os
import re
import signal
import threading
import time
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.constants  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import docker.types  # type: ignore[import-untyped]
import docker.utils  # type: ignore[import-untyped]

from pipes_bus._errors import ConfigurationError, LaunchError
from pipes_bus.launchers._base import (
    Job,
    JobStatus,
    Launcher,
    LaunchHandle,
    LaunchSpec,
    OutputLine,
    as_env,
)

__all__ = ["DockerJob", "DockerLauncher"]

SESSION_LABEL = "pipes-bus.session"
DEFAULT_HOST = "unix:///var/run/docker.sock"  # where docker-py goes without $DOCKER_HOST
PULL = ("missing", "always", "never")
DRAIN = 5.0  # seconds an exited container's log stream may take to end
STOP_WAIT = 0.5  # seconds stop() waits for the engine's reply to `docker stop`
PARTIAL = 64 * 1024  # a line without its newline is handed out once this long
_RUNNING = frozenset({"running", "paused", "restarting", "stopping"})  # Podman: stopping
_PENDING = frozenset({"created", "configured", "initialized"})


def _one_line(exc: BaseException) -> str:
    """What the engine said, on one line (an APIError's explanation, not its URL)."""
    text = str(getattr(exc, "explanation", None) or exc)
    return " ".join(text.split())


def _bad(option: str, expected: str, value: Any) -> ConfigurationError:
    return ConfigurationError(f"The {option!r} option {expected}, not {value!r}.")


def _optional_str(value: Any, option: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _bad(option, "is a string", value)


def _volumes(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        items = [None]
    for item in items:
        parts = item.split(":") if isinstance(item, str) else []
        if len(parts) not in (2, 3) or not all(parts[:2]) or not parts[1].startswith("/"):
            raise ConfigurationError(
                "The 'volumes' option takes \"host:container[:mode]\" strings as docker run -v "
                f'does, e.g. ["/data:/data:ro"]; {item!r} is not one.'
            )
    return list(items)


def _gpus(value: Any) -> int | None:
    if value is None:
        return None
    if value == "all":
        return -1
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise _bad("gpus", 'is a count (1 or more) or "all"', value)


class DockerLauncher(Launcher):
    """Runs the command in a container of ``image`` on a Docker Engine or Podman.

    Options (all keyword-only): ``image`` (needed to launch; attaching needs no option:
    the handle says where the container is); ``host`` (the engine's socket URL; default
    $DOCKER_HOST, else the SDK's default socket); ``volumes`` (``host:container[:mode]``
    strings); ``network`` (a network mode, e.g. "host"); ``user``; ``workdir``; ``pull``
    ("missing", "always" or "never"); ``remove`` (remove the container once its outcome
    and logs are read, True; when attaching, only if given True); ``gpus`` (a count or
    "all"; Podman ignores it); ``env`` (more variables); ``labels``; ``entrypoint``;
    ``shm_size``; ``init`` (an init as PID 1, so that a stop's SIGTERM reaches the
    command, True). See docs/launchers/docker.md.
    """

    name = "docker"

    def __init__(
        self,
        *,
        image: str | None = None,
        host: str | None = None,
        volumes: list[str] | None = None,
        network: str | None = None,
        user: str | int | None = None,
        workdir: str | None = None,
        pull: str = "missing",
        remove: bool | None = None,
        gpus: int | str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        entrypoint: str | list[str] | None = None,
        shm_size: str | int | None = None,
        init: bool = True,
    ) -> None:
        if image is not None and (not isinstance(image, str) or not image):
            raise _bad("image", 'is an image name, e.g. "python:3.12-slim"', image)
        self.image: str | None = image
        self.host = _optional_str(host, "host")
        self.volumes = _volumes(volumes)
        self.network = _optional_str(network, "network")
        if isinstance(user, int) and not isinstance(user, bool):
            user = str(user)
        self.user = _optional_str(user, "user")
        self.workdir = _optional_str(workdir, "workdir")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise _bad("workdir", "is an absolute path in the container", workdir)
        if pull not in PULL:
            raise _bad("pull", f"is one of {', '.join(PULL)}", pull)
        self.pull = pull
        if remove is not None and not isinstance(remove, bool):
            raise _bad("remove", "is true or false", remove)
        self.remove = remove
        self.gpus = _gpus(gpus)
        self.env = as_env(env)
        self.labels = as_env(labels, "labels")
        if entrypoint is not None and not (
            isinstance(entrypoint, str)
            or (isinstance(entrypoint, list) and all(isinstance(a, str) for a in entrypoint))
        ):
            raise _bad("entrypoint", "is a program or a list of strings", entrypoint)
        self.entrypoint = [entrypoint] if isinstance(entrypoint, str) else entrypoint
        if shm_size is not None and (
            isinstance(shm_size, bool) or not isinstance(shm_size, str | int)
        ):
            raise _bad("shm_size", 'is bytes or a size such as "1g"', shm_size)
        self.shm_size = shm_size
        if not isinstance(init, bool):
            raise _bad("init", "is true or false", init)
        self.init = init
        self.engine = "docker"

    # --- the engine ---------------------------------------------------------------------

    def where(self) -> str:
        """The engine's address, as the user would write it."""
        return self.host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST

    def describe(self) -> str:
        return f"{self.engine} at {self.where()}"

    def _client(self, where: str | None = None) -> Any:
        """A client of the engine at ``where`` (default: the configured one), at the API
        version its ``/_ping`` announces (capped at the SDK's); sets ``self.engine``. The
        SDK's own negotiation asks ``/version``, which takes 1-2 s on Podman."""
        address = where or self.where()

        def connect(version: str) -> Any:  # makes no request: the version is given
            if where is not None and where != self.where():
                return docker.DockerClient(base_url=where, version=version)
            if self.host:
                return docker.DockerClient(base_url=self.host, version=version)
            return docker.from_env(version=version)

        try:
            probe = connect(docker.constants.MINIMUM_DOCKER_API_VERSION)
            try:
                reply = probe.api.get(f"{probe.api.base_url}/_ping", timeout=30)
            finally:
                probe.close()
            if reply.status_code != 200:
                raise docker.errors.DockerException(f"/_ping answered {reply.status_code}")
        except Exception as exc:  # the SDK's, requests' and the socket's errors alike
            raise LaunchError(
                f"Cannot reach the container engine at {address}: {_one_line(exc)}. Check that "
                "dockerd (or podman system service) runs there, and DOCKER_HOST or the "
                "'host' option."
            ) from exc
        served = reply.headers.get("Api-Version") or docker.constants.MINIMUM_DOCKER_API_VERSION
        newest = docker.constants.DEFAULT_DOCKER_API_VERSION
        server = reply.headers.get("Server", "")
        self.engine = "podman" if "libpod" in server.lower() else "docker"
        return connect(served if docker.utils.version_lt(served, newest) else newest)

    def _image(self, client: Any) -> None:
        image = self.image
        if self.pull != "always":
            try:
                client.images.get(image)
                return
            except docker.errors.ImageNotFound:
                if self.pull == "never":
                    raise LaunchError(
                        f"The image {image} is not on the {self.describe()}, and pull is "
                        "'never': build or load it there first (docker build, docker load)."
                    ) from None
            except docker.errors.DockerException as exc:
                raise LaunchError(
                    f"Cannot look up the image {image} on the {self.describe()}: {_one_line(exc)}."
                ) from exc
        repository, tag = docker.utils.parse_repository_tag(image)
        try:
            for item in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(item, dict) and item.get("error"):
                    raise docker.errors.DockerException(item["error"])
            client.images.get(image)
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"Cannot pull the image {image} ({_one_line(exc)}): check its name and that "
                f"the {self.describe()} can reach its registry, or load it there and use "
                "pull 'never'."
            ) from exc

    # --- launching ----------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> DockerJob:
        if self.image is None:
            raise ConfigurationError(
                "The docker launcher needs an image to launch: -L image=python:3.12-slim "
                '(image="..." in the API).'
            )
        client = self._client()
        try:
            self._image(client)
            container = self._create(client, spec)
        except BaseException:
            client.close()
            raise
        try:
            container.start()
        except docker.errors.DockerException as exc:
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
            client.close()
            raise LaunchError(
                f"The {self.describe()} could not start {spec.command[0]!r} in the image "
                f"{self.image}: {_one_line(exc)}."
            ) from exc
        handle = LaunchHandle(
            launcher=self.name,
            job_id=container.id,
            where=self.where(),
            extra={
                "engine": self.engine,
                "image": self.image,
                "name": container.name,
                "session": spec.session,
                "grace": f"{spec.grace:g}",
                "remove": "false" if self.remove is False else "true",
            },
        )
        remove = self.remove is not False
        return DockerJob(client, container, handle, grace=spec.grace, remove=remove)

    def _create(self, client: Any, spec: LaunchSpec) -> Any:
        volumes = list(self.volumes)
        if spec.bus_dir is not None and spec.bus_dir not in {v.split(":")[1] for v in volumes}:
            volumes.append(f"{spec.bus_dir}:{spec.bus_dir}:rw")
        options: dict[str, Any] = {
            "command": list(spec.command),
            "environment": {**self.env, **spec.env},
            "labels": {**self.labels, SESSION_LABEL: spec.session},
            "volumes": volumes,
            "detach": True,
            "init": self.init,
        }
        for key, value in (
            ("network_mode", self.network),
            ("user", self.user),
            ("working_dir", self.workdir or spec.cwd),
            ("entrypoint", self.entrypoint),
            ("shm_size", self.shm_size),
        ):
            if value is not None:
                options[key] = value
        if self.gpus is not None:
            options["device_requests"] = [
                docker.types.DeviceRequest(count=self.gpus, capabilities=[["gpu"]])
            ]
        try:
            return client.containers.create(self.image, **options)
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"The {self.describe()} refused the container of {self.image}: {_one_line(exc)}."
            ) from exc

    def attach(self, handle: LaunchHandle) -> DockerJob:
        client = self._client(handle.where or None)
        try:
            container = client.containers.get(handle.job_id)
        except docker.errors.NotFound:
            container = None
        except docker.errors.DockerException as exc:
            client.close()
            raise LaunchError(
                f"Cannot ask the {self.engine} at {handle.where} about the container "
                f"{handle.job_id[:12]}: {_one_line(exc)}."
            ) from exc
        grace = float(handle.extra.get("grace", "10"))
        # Only the launching process removes it at its end (it reads the exit code): one
        # that attaches (pipes-bus cancel, a follower) would race it, unless told to.
        remove = self.remove is True
        return DockerJob(client, container, handle, grace=grace, remove=remove, since=time.time())


class DockerJob(Job):
    """A container: its state from ``attrs["State"]``, its logs from one follow stream."""

    def __init__(
        self,
        client: Any,
        container: Any,
        handle: LaunchHandle,
        *,
        grace: float,
        remove: bool,
        since: float | None = None,
    ) -> None:
        self.handle = handle
        self._client = client
        self._container = container
        self._grace = grace
        self._remove = remove
        self._stopping: str | None = None
        self._final: JobStatus | None = None
        self._lines: collections.deque[OutputLine] = collections.deque()
        self._stream: Any = None
        self._newest = -1  # the newest log frame's timestamp (ns)
        self._recent: collections.deque[int] = collections.deque()
        self._closed = False
        self._ended = threading.Event()
        if container is None:
            self._ended.set()
            self._final = JobStatus(
                "unknown",
                reason=f"no container {handle.job_id[:12]} at {handle.where}: it was removed",
            )
            return
        self._reader = threading.Thread(
            target=self._read, args=(since,), name=f"pipes-bus-logs-{container.short_id}"
        )
        self._reader.daemon = True
        self._reader.start()

    # --- state --------------------------------------------------------------------------

    def status(self) -> JobStatus:
        if self._final is not None:
            return self._final
        try:
            self._container.reload()
        except docker.errors.NotFound:
            self._final = JobStatus(
                "unknown", reason="the container was removed before its exit status was read"
            )
            return self._final
        except Exception as exc:  # the engine is unreachable: a state, not a crash
            return JobStatus("running", reason=f"cannot ask the engine: {_one_line(exc)}")
        status = _status(self._container.attrs.get("State") or {}, self._stopping)
        if status.finished:
            # Its last lines are in once the log stream ends; then it may go.
            self._ended.wait(DRAIN)
            if self._remove:
                with contextlib.suppress(docker.errors.DockerException):
                    self._container.remove(v=True)
            self._final = status
        return status

    def output(self) -> list[OutputLine]:
        lines: list[OutputLine] = []
        with contextlib.suppress(IndexError):
            while True:
                lines.append(self._lines.popleft())
        return lines

    # --- stopping -----------------------------------------------------------------------

    def stop(self, *, force: bool = False) -> None:
        if self._container is None or self._final is not None:
            return
        if force:
            self._stopping = "killed (docker kill)"
            with contextlib.suppress(docker.errors.DockerException):
                self._container.kill()
            return
        if self._stopping is None:
            self._stopping = f"stopped (docker stop: SIGTERM, SIGKILL after {self._grace:g} s)"
        # `docker stop` replies once the container is gone, but the engine carries it out
        # (its stop signal, SIGKILL after t seconds) whether or not anyone waits: wait only
        # long enough for the request to arrive. Even a process that exits right after
        # (pipes-bus cancel) leaves the escalation to the engine.
        api = self._client.api
        url = f"{api.base_url}/v{api.api_version}/containers/{self._container.id}/stop"
        with contextlib.suppress(Exception):
            api.post(url, params={"t": max(0, math.ceil(self._grace))}, timeout=(5, STOP_WAIT))

    def close(self) -> None:
        self._closed = True
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        with contextlib.suppress(Exception):
            self._client.close()

    # --- the log stream -----------------------------------------------------------------

    def _read(self, since: float | None) -> None:
        """Follow the container's log into ``self._lines`` until it ends, then read its
        last second once more: Docker ends a follow stream when the container stops, which
        can be before the output it flushes at exit (a last line without its newline) is
        logged. The frames of that second already handed out are counted, and skipped."""
        partial = {1: b"", 2: b""}
        try:
            start = None if since is None else int(since * 1e9)
            if self._pass(partial, since=start) and not self._closed:
                if self._newest < 0:
                    self._pass(partial, since=start, skip=0, follow=False)
                else:
                    again = self._newest - 10**9
                    seen = sum(1 for key in self._recent if key >= again)
                    self._pass(partial, since=again, skip=seen, follow=False)
        except Exception as exc:
            if not self._closed:
                text = f"pipes-bus: the container's log stream broke: {_one_line(exc)}"
                self._lines.append(("stderr", text))
        finally:
            for kind, rest in partial.items():
                if rest:
                    self._add(kind, rest)
            self._ended.set()

    def _pass(
        self, partial: dict[int, bytes], *, since: int | None, skip: int = 0, follow: bool = True
    ) -> bool:
        """One read of the log, a multiplexed stream (each frame says whether it is stdout
        or stderr, and starts with its timestamp), skipping its first ``skip`` frames;
        whether it ended by itself."""
        api = self._client.api
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1}
        if follow:
            params["follow"] = 1
        if since is not None:
            params["since"] = f"{since // 10**9}.{since % 10**9:09d}"
        url = f"{api.base_url}/v{api.api_version}/containers/{self._container.id}/logs"
        # No read timeout: the job may be quiet for longer than the client's 60 s.
        response = api.get(url, params=params, stream=True, timeout=(60, None))
        if response.status_code == 404 and not follow:
            return True  # removed meanwhile: nothing more to read
        if response.status_code != 200:
            raise docker.errors.DockerException(f"{response.status_code} {response.text.strip()}")
        self._stream = docker.types.CancellableStream(iter(()), response)
        if self._closed:
            self._stream.close()
        raw = response.raw
        while True:
            header = _read_exactly(raw, 8)
            if len(header) < 8:
                return not self._closed
            kind, size = header[0], int.from_bytes(header[4:8], "big")
            data = _read_exactly(raw, size)
            if len(data) < size:
                return not self._closed
            if skip > 0:
                skip -= 1
                continue
            key, data = _timestamp(data, self._newest)
            # The keys of the last two seconds' frames: what a second read would repeat.
            self._newest = max(self._newest, key)
            self._recent.append(key)
            while self._recent[0] < self._newest - 2 * 10**9:
                self._recent.popleft()
            if kind not in partial:
                continue
            *whole, rest = (partial[kind] + data).split(b"\n")
            for line in whole:
                self._add(kind, line)
            if len(rest) >= PARTIAL:
                self._add(kind, rest)
                rest = b""
            partial[kind] = rest

    def _add(self, kind: int, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace")
        self._lines.append(("stderr" if kind == 2 else "stdout", text.removesuffix("\r")))


_TIMESTAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")


def _timestamp(frame: bytes, default: int) -> tuple[int, bytes]:
    """A log frame's timestamp (ns since the epoch) and its text. Docker gives
    nanoseconds, Podman whole seconds; a frame without one keeps ``default``."""
    match = _TIMESTAMP.match(frame)
    if match is None:
        return default, frame
    base, fraction, zone = (g.decode() if g else "" for g in match.groups())
    moment = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return int(moment.timestamp()) * 10**9 + int(fraction.ljust(9, "0") or 0), frame[match.end() :]


def _read_exactly(raw: Any, size: int) -> bytes:
    """``size`` bytes from the response, fewer only at its end."""
    data = b""
    while len(data) < size:
        chunk = raw.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _status(state: dict[str, Any], stopping: str | None) -> JobStatus:
    """A container's ``State`` as a JobStatus (``stopping``: why we stopped it, if we did)."""
    name = str(state.get("Status", "")).lower()
    error = str(state.get("Error") or "")
    if state.get("Running") or name in _RUNNING:
        return JobStatus("running", reason=name if name != "running" else None)
    if name in _PENDING and not error:
        return JobStatus("pending", reason=name)
    code = state.get("ExitCode")
    code = code if isinstance(code, int) and code >= 0 else 1
    if code == 0 and not error:
        return JobStatus("succeeded", 0)
    if state.get("OOMKilled"):
        return JobStatus("failed", code, "killed: out of memory (OOMKilled)")
    if error:
        return JobStatus("failed", code or 1, error)
    if stopping is not None:
        return JobStatus("cancelled", code, stopping)
    if code > 128:
        with contextlib.suppress(ValueError):
            return JobStatus("failed", code, f"ended by {signal.Signals(code - 128).name}")
    return JobStatus("failed", code, f"exited {code}")
