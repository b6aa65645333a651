"""Any other fsspec protocol, through fsspec's generic filesystem interface."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from pipes_bus._errors import ObjectTooLargeError, store_errors
from pipes_bus.transports._base import Capabilities, Transport

__all__ = ["FsspecTransport"]


class FsspecTransport(Transport):
    """Objects through an fsspec filesystem built with the listings cache off.

    fsspec caches listings, negative answers included, so a chunk that appears after
    its folder was listed could be reported missing for good. Every filesystem here is
    built with ``use_listings_cache=False`` and ``skip_instance_cache=True``.

    Creation is ``pipe_file(mode="create")``: exclusive only where the backend makes it
    so (many create by check-then-write), which is why the cloud stores have plugins.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(shared=True, linger=0.25, poll=0.05)

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        import fsspec  # type: ignore[import-untyped]

        options = {"use_listings_cache": False, "skip_instance_cache": True, **storage_options}
        with store_errors(url=url, key=None, op="open"):
            self.fs, root = fsspec.url_to_fs(url, **options)
        self.root = root.rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.stats.count("put", sent=len(data))
        with store_errors(url=self.url, key=key, op="write"):
            try:
                self.fs.pipe_file(self._path(key), data, mode="create")
            except FileExistsError:
                return False
        return True

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        with store_errors(url=self.url, key=key, op="read"):
            try:
                if max_size is None:
                    data = self.fs.cat_file(self._path(key))
                else:
                    data = self.fs.cat_file(self._path(key), start=0, end=max_size + 1)
            except FileNotFoundError:
                self.stats.count("get")
                return None
        self.stats.count("get", received=len(data))
        if max_size is not None and len(data) > max_size:
            raise ObjectTooLargeError.over_limit(self.url, key, len(data), max_size)
        return bytes(data)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self.stats.count("list")
        with store_errors(url=self.url, key=prefix, op="list"):
            try:
                entries = self.fs.ls(self._path(prefix), detail=False)
            except FileNotFoundError:
                return []
        base = self._path(prefix).rstrip("/") + "/"
        names = set()
        for entry in entries:
            path = str(entry).rstrip("/")
            name = path[len(base) :] if path.startswith(base) else path.rsplit("/", 1)[-1]
            if name and "/" not in name:
                names.add(name)
        result = sorted(names)
        return [n for n in result if n > after] if after is not None else result

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        self.stats.count("list")
        root = self._path("").rstrip("/") + "/"
        with store_errors(url=self.url, key=prefix, op="list"):
            try:
                found = self.fs.find(self._path(prefix), detail=True)
            except FileNotFoundError:
                return
        for path, info in sorted(found.items()):
            key = str(path)[len(root) :] if str(path).startswith(root) else str(path)
            size = info.get("size")
            yield key, int(size) if isinstance(size, int) else -1

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        with (
            store_errors(url=self.url, key=key, op="delete"),
            contextlib.suppress(FileNotFoundError),
        ):
            self.fs.rm_file(self._path(key))
