"""The stores benchmarks run against, by name. Each opens a fresh, empty bus location.

A store is a context manager yielding a :class:`Store`: the bus URL, the storage options
and environment both the CLI and the worker need, and whether other processes see it.
To benchmark another store (moto's S3 server, Azurite, fake-gcs-server), write one such
context manager that starts the server on a free loopback port, yields its Store and
stops the server, and add it to ``STORES``; every benchmark with a ``--store`` option
then runs on it unchanged.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipes_bus import Transport, open_transport


@dataclass(frozen=True)
class Store:
    """A bus location to benchmark against."""

    name: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)  # added to CLI and worker env
    shared: bool = True  # visible to other processes: needed by end-to-end benchmarks

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


STORES: dict[str, Callable[[], contextlib.AbstractContextManager[Store]]] = {
    "memory": memory_store,
    "file": file_store,
}


def open_store(name: str) -> contextlib.AbstractContextManager[Store]:
    """The store called ``name`` (see ``STORES``)."""
    try:
        return STORES[name]()
    except KeyError:
        raise SystemExit(f"unknown store {name!r}; known: {', '.join(STORES)}") from None
