"""The transport interface: four operations on immutable objects, a walk for clean-up,
plus capabilities."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Capabilities", "RequestStats", "Transport"]


@dataclass(frozen=True)
class Capabilities:
    """What readers, writers and sessions need to know about a store, and the timings that
    suit it. Every field is read by the core; a transport overrides the ones that differ.

    ``shared``: other processes (and hosts) see the same objects.
    ``linger`` / ``poll``: default writer linger and fastest reader poll, in seconds.
    ``idle_rate``: requests per second a reader may spend on a session where nothing
    happens, whatever its number of writers (idle streams are probed less often).
    ``read_ahead``: a reader fetches a stream's next chunk while it decodes the current one
    (worth a thread where each request waits on a network; not for local stores).
    """

    shared: bool = True
    linger: float = 0.25
    poll: float = 0.05
    idle_rate: float = 1.0
    read_ahead: bool = True


@dataclass
class RequestStats:
    """Requests a transport made, by kind, and the bytes it moved. Thread-safe."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, kind: str, *, sent: int = 0, received: int = 0) -> None:
        """Record one request of ``kind`` (put, get, list, head, delete)."""
        with self._lock:
            self.requests[kind] = self.requests.get(kind, 0) + 1
            self.bytes_sent += sent
            self.bytes_received += received

    @property
    def total(self) -> int:
        """All requests of every kind."""
        return sum(self.requests.values())

    def snapshot(self) -> dict[str, Any]:
        """A plain dict copy, for results and reports."""
        with self._lock:
            return {
                "requests": dict(self.requests),
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
            }


class Transport:
    """Moves immutable objects to and from one store location (the bus URL).

    Keys are '/'-separated and relative to that location. Implementations must be
    thread-safe and translate store failures into
    :class:`~pipes_bus.TransientStoreError` or :class:`~pipes_bus.PermanentStoreError`
    (see :func:`~pipes_bus.transports.store_errors`). Subclass, implement the four methods,
    and run :mod:`pipes_bus.testing.conformance` against it. For a store of buckets
    (``scheme://BUCKET/PREFIX``), :class:`~pipes_bus.transports.BucketTransport` holds all
    but the store's own requests.
    """

    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.storage_options = storage_options
        self.stats = RequestStats()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` holding ``data`` atomically; False if ``key`` already exists."""
        raise NotImplementedError

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        """The whole object at ``key``, or None if there is none.

        With ``max_size``, an object larger than that raises ``ObjectTooLargeError``
        without being read into memory.
        """
        raise NotImplementedError

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        """Sorted names of the direct children of ``prefix`` (objects and folders).

        With ``after``, only names that sort after it. A missing prefix lists as empty.
        """
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove the object at ``key``; a missing object is not an error."""
        raise NotImplementedError

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every object below ``prefix``, at any depth: ``(key, size in bytes)``.

        Only clean-up uses it (``pipes-bus gc``), never a reader. The default lists folder
        by folder and cannot tell sizes (-1); a store that lists a whole tree with sizes in
        one paged request should say so here.
        """
        for name in self.list(prefix):
            key = f"{prefix}/{name}" if prefix else name
            inner = list(self.walk(key))
            yield from inner if inner else [(key, -1)]

    def close(self) -> None:
        """Release connections. The default does nothing."""

    def describe(self, key: str = "") -> str:
        """The full location of ``key``, for messages."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
