"""``file://`` and plain paths: a directory on a local or shared filesystem."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, ClassVar

from .._errors import ConfigurationError, ObjectTooLargeError, store_errors
from ._base import Capabilities, Transport

__all__ = ["FileTransport"]

_TEMP_PREFIX = ".tmp-"


def local_path(url: str) -> str:
    """The directory a ``file://`` URL or plain path names."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        if path.startswith("localhost/"):
            path = path[len("localhost") :]
        if not path.startswith("/") and not (len(path) > 1 and path[1] == ":"):
            raise ConfigurationError(
                f"{url!r} is not an absolute file URL; write file:///abs/path or a plain path."
            )
        return path
    if url.startswith("local://"):
        return url[len("local://") :]
    return url


class FileTransport(Transport):
    """Objects as files. Publication is atomic: temp file, fsync, link into place."""

    schemes: ClassVar[tuple[str, ...]] = ("file", "local", "")
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_create=True,
        list_after=False,
        shared=True,
        linger=0.01,
        poll=0.005,
        idle_rate=50.0,
        read_ahead=False,
    )

    def __init__(self, url: str, *, fsync: bool = True, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        self.root = os.path.abspath(os.path.expanduser(local_path(url)))
        self.fsync = fsync
        self._dirs: set[str] = set()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        folder = os.path.dirname(path)
        self.stats.count("put", sent=len(data))
        with store_errors(url=self.url, key=key, op="write"):
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                return True
            finally:
                os.unlink(tmp)

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        path = self._path(key)
        with store_errors(url=self.url, key=key, op="read"):
            try:
                f = open(path, "rb")  # noqa: SIM115 - closed below
            except (FileNotFoundError, NotADirectoryError):
                self.stats.count("get")
                return None
            with f:
                if max_size is not None:
                    size = os.fstat(f.fileno()).st_size
                    if size > max_size:
                        self.stats.count("get")
                        raise ObjectTooLargeError.over_limit(self.url, key, size, max_size)
                data = f.read()
        self.stats.count("get", received=len(data))
        return data

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self.stats.count("list")
        with store_errors(url=self.url, key=prefix, op="list"):
            try:
                names = os.listdir(self._path(prefix))
            except (FileNotFoundError, NotADirectoryError):
                return []
        names = sorted(n for n in names if not n.startswith(_TEMP_PREFIX))
        return [n for n in names if n > after] if after is not None else names

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        with (
            store_errors(url=self.url, key=key, op="delete"),
            contextlib.suppress(FileNotFoundError),
        ):
            os.unlink(self._path(key))
