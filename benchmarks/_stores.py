"""The stores benchmarks run against, by name. Each opens a fresh, empty bus location.

A store is a context manager yielding a :class:`Store`: the bus URL, the storage options
and environment both the CLI and the worker need, and whether other processes see it.

- ``memory`` and ``file``: this process's memory, a fresh local directory.
- ``s3``: moto's S3 server; ``azure``: Azurite; ``gcs``: fake-gcs-server. Each server is
  started on a free loopback port the first time a store on it is opened (with
  ``pipes_bus.testing.servers``, the same code the transport tests use), gets one bucket, and is
  stopped when the benchmark process exits. Every store is a fresh prefix in that bucket.
  The server's settings are put in this process's environment (``AWS_ENDPOINT_URL_S3``,
  ``STORAGE_EMULATOR_HOST``, ``AZURE_STORAGE_CONNECTION_STRING``), where the CLI and the
  workers it starts inherit them, as a user's shell would pass them on.
- ``s3_proxied_store(faults)``: an S3 store reached through a :class:`CountingProxy` (a
  ``pipes_bus.testing.FaultProxy`` that also counts requests by kind), for request
  accounting as the store sees it and for fault injection. Its endpoint travels as the
  ``endpoint_url`` storage option, so it overrides the environment's for this store only.
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
from pathlib import Path
from typing import Any

# gcsfs >= 2026.3 hangs on gRPC against an emulator unless this is set before it is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from pipes_bus.transports import Transport, open_transport

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "pipes-bus-bench"
CLOUD = ("s3", "azure", "gcs")


@dataclass(frozen=True)
class Store:
    """A bus location to benchmark against."""

    name: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # added to CLI and worker env
    shared: bool = True  # visible to other processes: needed by end-to-end benchmarks
    proxy: Any = None  # the CountingProxy in front of the server, if any

    def transport(self) -> Transport:
        """A new transport on this store (its own request counters)."""
        return open_transport(self.url, **self.storage_options)

    def storage_args(self) -> list[str]:
        """This store's ``--storage-option`` arguments for the ``pipes-bus`` commands."""
        return [a for k, v in self.storage_options.items() for a in ("-o", f"{k}={json.dumps(v)}")]


def _delete_tree(transport: Transport, prefix: str) -> None:
    """Delete every object under ``prefix`` through the transport interface."""
    for name in transport.list(prefix):
        key = f"{prefix}/{name}" if prefix else name
        if transport.list(key):
            _delete_tree(transport, key)
        transport.delete(key)


@contextlib.contextmanager
def memory_store() -> Iterator[Store]:
    """``memory://``: this process only. Emptied afterwards (it lives in process memory)."""
    store = Store("memory", f"memory://bench-{secrets.token_hex(4)}", shared=False)
    try:
        yield store
    finally:
        _delete_tree(store.transport(), "")


@contextlib.contextmanager
def file_store() -> Iterator[Store]:
    """A fresh local directory (a plain path, like the CLI's default bus), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pipes-bus-bench-") as path:
        yield Store("file", path)


# --- local cloud-store servers -----------------------------------------------------------------


def _servers_module() -> Any:
    from pipes_bus.testing import servers

    return servers


@dataclass
class _Running:
    url: str  # the server's own endpoint
    env: dict[str, str]
    stop: Callable[[], None]


_RUNNING: dict[str, _Running] = {}
_LOCK = threading.Lock()

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Keep a developer's own ~/.aws out of the measurements.
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
_LOOPBACK = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _start_s3() -> _Running:
    servers = _servers_module()
    server = servers.start_moto()
    env = {**S3_ENV, **_LOOPBACK, "AWS_ENDPOINT_URL_S3": server.url}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(env)
    import boto3

    boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket=BUCKET)
    return _Running(server.url, env, server.stop)


def _start_gcs() -> _Running:
    servers = _servers_module()
    server = servers.start_fake_gcs()
    env = {
        **_LOOPBACK,
        "STORAGE_EMULATOR_HOST": server.url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    os.environ.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    os.environ.update(env)
    import pipes_bus_gcs  # noqa: F401 - its gcsfs settings apply before gcsfs loads
    from gcsfs.core import GCSFileSystem

    GCSFileSystem(endpoint_url=server.url, token="anon", skip_instance_cache=True).mkdir(BUCKET)
    return _Running(server.url, env, server.stop)


def _start_azure() -> _Running:
    servers = _servers_module()
    server = servers.start_azurite()
    connection = servers.azurite_connection_string(server)
    env = {**_LOOPBACK, "AZURE_STORAGE_CONNECTION_STRING": connection}
    for name in (
        "AZURE_STORAGE_ACCOUNT_NAME",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
    ):
        os.environ.pop(name, None)
    os.environ.update(env)
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection) as client:
        client.create_container(BUCKET)
    return _Running(server.url, env, server.stop)


_STARTERS: dict[str, Callable[[], _Running]] = {
    "s3": _start_s3,
    "gcs": _start_gcs,
    "azure": _start_azure,
}
_SCHEMES = {"s3": "s3", "gcs": "gs", "azure": "az"}


def server(name: str) -> _Running:
    """The running server of cloud store ``name``, started (with a bucket) on first use."""
    with _LOCK:
        running = _RUNNING.get(name)
        if running is None:
            print(f"starting the local {name} server ...", file=sys.stderr, flush=True)
            running = _RUNNING[name] = _STARTERS[name]()
        return running


def stop_servers() -> None:
    """Stop every server this process started."""
    with _LOCK:
        for running in _RUNNING.values():
            with contextlib.suppress(Exception):
                running.stop()
        _RUNNING.clear()


atexit.register(stop_servers)


def _cloud_store(name: str) -> Callable[[], contextlib.AbstractContextManager[Store]]:
    @contextlib.contextmanager
    def open_it() -> Iterator[Store]:
        running = server(name)
        prefix = f"b-{secrets.token_hex(6)}"
        # Objects stay until the server stops (it keeps them in memory or a temp dir).
        yield Store(name, f"{_SCHEMES[name]}://{BUCKET}/{prefix}", env=running.env)

    open_it.__doc__ = f"A fresh prefix in the bucket of the local {name} server."
    return open_it


@contextlib.contextmanager
def s3_proxied_store(faults: Any = None, name: str = "s3", rtt: float = 0.0) -> Iterator[Store]:
    """A fresh S3 prefix reached through a new :class:`CountingProxy` with ``faults``."""
    from _proxy import CountingProxy

    running = server("s3")
    with CountingProxy(running.url, faults, rtt=rtt) as proxy:
        prefix = f"b-{secrets.token_hex(6)}"
        yield Store(
            name,
            f"s3://{BUCKET}/{prefix}",
            storage_options={"endpoint_url": proxy.url},
            env=running.env,
            proxy=proxy,
        )


STORES: dict[str, Callable[[], contextlib.AbstractContextManager[Store]]] = {
    "memory": memory_store,
    "file": file_store,
    **{name: _cloud_store(name) for name in CLOUD},
}


def open_store(name: str) -> contextlib.AbstractContextManager[Store]:
    """The store called ``name`` (see ``STORES``)."""
    try:
        return STORES[name]()
    except KeyError:
        raise SystemExit(f"unknown store {name!r}; known: {', '.join(STORES)}") from None
