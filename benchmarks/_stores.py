"""The stores the suite runs on, by name; each opens a fresh, empty bus location.

``memory`` (this process only) and ``file`` (a fresh local directory); ``s3`` (moto),
``azure`` (Azurite) and ``gcs`` (fake-gcs-server): local servers started on first use with
``pipes_bus.testing.servers`` on free loopback ports, one bucket each, stopped when the
suite exits. Every cloud store is a fresh prefix in that bucket. A server's settings go
into this process's environment (``AWS_ENDPOINT_URL_S3``, ``STORAGE_EMULATOR_HOST``,
``AZURE_STORAGE_CONNECTION_STRING``), where the CLI and its workers inherit them as they
would a user's shell. ``s3_proxied(faults, rtt)`` is an S3 store reached through a
:class:`~_proxy.CountingProxy`, whose endpoint travels as the ``endpoint_url`` storage
option, so it holds for that store only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

# gcsfs >= 2026.3 hangs on gRPC against an emulator unless this is set before it is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from pipes_bus.transports import Transport, open_transport

BUCKET = "pipes-bus-bench"
PLUGINS = {"s3": "pipes_bus_s3", "azure": "pipes_bus_azure", "gcs": "pipes_bus_gcs"}
_SCHEMES = {"s3": "s3", "gcs": "gs", "azure": "az"}
_LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Keep a developer's own ~/.aws out of the measurements.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@dataclass(frozen=True)
class Store:
    """A bus location: its URL, the storage options and environment the CLI and the worker
    need, whether other processes see it, and the counting proxy in front of it, if any."""

    name: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    shared: bool = True
    proxy: Any = None

    def transport(self) -> Transport:
        """A new transport on this store (with its own request counters)."""
        return open_transport(self.url, **self.storage_options)

    def storage_args(self) -> list[str]:
        """This store's ``-o KEY=JSON`` arguments for the ``pipes-bus`` commands."""
        return [a for k, v in self.storage_options.items() for a in ("-o", f"{k}={json.dumps(v)}")]

    def preload(self) -> list[str]:
        """workload.py arguments that import the store's plugin before forking children."""
        return ["--preload", PLUGINS[self.name]] if self.name in PLUGINS else []


def _clean(names: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(env)
    return env


def _start_s3(servers: Any) -> tuple[str, dict[str, str], Callable[[], None]]:
    server = servers.start_moto()
    env = {**S3_ENV, **_LOOPBACK, "AWS_ENDPOINT_URL_S3": server.url}
    _clean(("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"), env)
    import boto3

    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=BUCKET)
    return server.url, env, server.stop


def _start_gcs(servers: Any) -> tuple[str, dict[str, str], Callable[[], None]]:
    server = servers.start_fake_gcs()
    env = {**_LOOPBACK, "STORAGE_EMULATOR_HOST": server.url}
    _clean(
        ("GOOGLE_APPLICATION_CREDENTIALS",), {**env, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    )
    import pipes_bus_gcs  # noqa: F401 - its gcsfs settings apply before gcsfs loads
    from gcsfs.core import GCSFileSystem

    GCSFileSystem(endpoint_url=server.url, token="anon", skip_instance_cache=True).mkdir(BUCKET)
    return server.url, env, server.stop


def _start_azure(servers: Any) -> tuple[str, dict[str, str], Callable[[], None]]:
    server = servers.start_azurite()
    connection = servers.azurite_connection_string(server)
    env = {**_LOOPBACK, "AZURE_STORAGE_CONNECTION_STRING": connection}
    names = ("ACCOUNT_NAME", "ACCOUNT_KEY", "SAS_TOKEN", "ACCOUNT", "KEY")
    _clean(tuple(f"AZURE_STORAGE_{n}" for n in names), env)
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection) as client:
        client.create_container(BUCKET)
    return server.url, env, server.stop


STARTERS = {"s3": _start_s3, "gcs": _start_gcs, "azure": _start_azure}
_RUNNING: dict[str, tuple[str, dict[str, str], Callable[[], None]]] = {}
_LOCK = threading.Lock()


def server(name: str) -> tuple[str, dict[str, str]]:
    """The endpoint and environment of cloud store ``name``'s server, started on first use."""
    with _LOCK:
        if name not in _RUNNING:
            print(f"starting the local {name} server ...", file=sys.stderr, flush=True)
            from pipes_bus.testing import servers

            _RUNNING[name] = STARTERS[name](servers)
        url, env, _ = _RUNNING[name]
        return url, env


@atexit.register
def stop_servers() -> None:
    with _LOCK:
        for _, _, stop in _RUNNING.values():
            with contextlib.suppress(Exception):
                stop()
        _RUNNING.clear()


def _delete_tree(transport: Transport, prefix: str) -> None:
    for name in transport.list(prefix):
        key = f"{prefix}/{name}" if prefix else name
        if transport.list(key):
            _delete_tree(transport, key)
        transport.delete(key)


@contextlib.contextmanager
def open_store(name: str) -> Iterator[Store]:
    """A fresh, empty location on store ``name``: memory, file, s3, azure or gcs."""
    prefix = f"b-{secrets.token_hex(6)}"
    if name == "memory":
        store = Store("memory", f"memory://{prefix}", shared=False)
        try:
            yield store
        finally:
            _delete_tree(store.transport(), "")  # it lives in this process's memory
    elif name == "file":
        with tempfile.TemporaryDirectory(prefix="pipes-bus-bench-") as path:
            yield Store("file", path)
    elif name in STARTERS:
        # Objects stay until the server stops (it keeps them in memory or a temp dir).
        yield Store(name, f"{_SCHEMES[name]}://{BUCKET}/{prefix}", env=server(name)[1])
    else:
        raise SystemExit(f"unknown store {name!r}; known: memory, file, {', '.join(STARTERS)}")


@contextlib.contextmanager
def s3_proxied(faults: Any = None, rtt: float = 0.0) -> Iterator[Store]:
    """A fresh S3 prefix reached through a new CountingProxy (with ``faults``, ``rtt``)."""
    from _proxy import CountingProxy

    url, env = server("s3")
    with CountingProxy(url, faults, rtt=rtt) as proxy:
        options = {"endpoint_url": proxy.url}
        yield Store("s3", f"s3://{BUCKET}/b-{secrets.token_hex(6)}", options, env, proxy=proxy)
