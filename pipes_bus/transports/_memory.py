"""``memory://``: objects in this process's memory, for tests and single-process use."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from pipes_bus._errors import ObjectTooLargeError
from pipes_bus.transports._base import Capabilities, Transport

__all__ = ["MemoryTransport"]

# One store per process, shared by every MemoryTransport, as fsspec's memory:// is.
_STORE: dict[str, bytes] = {}
_KEYS: list[str] = []  # sorted, for listing
_LOCK = threading.Lock()


class MemoryTransport(Transport):
    """Objects in a process-wide dict, published under a lock."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        shared=False,
        linger=0.005,
        poll=0.001,
        idle_rate=1000.0,
        read_ahead=False,
    )

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        root = url.split("://", 1)[1] if "://" in url else url
        self._root = root.strip("/")

    def _path(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        self.stats.count("put", sent=len(data))
        with _LOCK:
            if path in _STORE:
                return False
            _STORE[path] = bytes(data)
            bisect.insort(_KEYS, path)
            return True

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        data = _STORE.get(self._path(key))
        self.stats.count("get", received=len(data) if data else 0)
        if data is not None and max_size is not None and len(data) > max_size:
            raise ObjectTooLargeError.over_limit(self.url, key, len(data), max_size)
        return data

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self.stats.count("list")
        base = self._path(prefix).rstrip("/") + "/"
        start = base + after if after is not None else base
        names: list[str] = []
        with _LOCK:
            i = (
                bisect.bisect_right(_KEYS, start)
                if after is not None
                else bisect.bisect_left(_KEYS, base)
            )
            while i < len(_KEYS) and _KEYS[i].startswith(base):
                name, slash, _ = _KEYS[i][len(base) :].partition("/")
                if (after is None or name > after) and (not names or names[-1] != name):
                    names.append(name)
                # Skip the rest of a folder: every key below "name/" sorts before "name0".
                i = bisect.bisect_left(_KEYS, base + name + "0", i + 1) if slash else i + 1
        return names

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        root = f"{self._root}/" if self._root else ""
        base = f"{root}{prefix.strip('/')}/" if prefix else root
        with _LOCK:
            found = [(k[len(root) :], len(_STORE[k])) for k in _KEYS if k.startswith(base)]
        self.stats.count("list")
        yield from found

    def delete(self, key: str) -> None:
        path = self._path(key)
        self.stats.count("delete")
        with _LOCK:
            if _STORE.pop(path, None) is not None:
                del _KEYS[bisect.bisect_left(_KEYS, path)]


def clear() -> None:
    """Forget every object in this process's memory store (for tests)."""
    with _LOCK:
        _STORE.clear()
        _KEYS.clear()
