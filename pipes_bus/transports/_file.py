"""``file://`` and plain paths: a directory on a local or shared filesystem.

Anyone who can write to the directory may plant a FIFO, a device, a folder or a symbolic
link where a chunk belongs. Every path below the bus's root is therefore walked one
component at a time without following symbolic links, and only regular files are read,
opened without blocking and read to at most their size limit plus one byte. A planted
object is an :class:`~pipes_bus.UnreadableObjectError` naming its key, never a hang, an
unbounded read, or a read outside the bus.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from typing import Any, ClassVar

from pipes_bus._errors import (
    ConfigurationError,
    ObjectTooLargeError,
    UnreadableObjectError,
    store_errors,
)
from pipes_bus.transports._base import Capabilities, Transport

__all__ = ["FileTransport", "read_regular_file"]

_TEMP_PREFIX = ".tmp-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Without dir_fd support (Windows), paths are used as they are.
_WALK = os.open in os.supports_dir_fd and bool(_NOFOLLOW and _DIRECTORY)
# What opening a planted symbolic link with O_NOFOLLOW fails with (ELOOP on Linux).
_Found = list[tuple[str, int]]  # what a walk found: (key, size)
_Parts = list[str]
# Folders deeper than this below a walk's prefix are not entered (pipes_bus makes three).
_MAX_DEPTH = 32
_LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP), errno.ENOTDIR}


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


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_regular_file(
    fd: int, *, max_size: int | None, where: str, url: str = "", key: str | None = None
) -> bytes:
    """Read an opened file, which must be a regular file, to at most ``max_size`` bytes.

    Raises UnreadableObjectError (``foreign``) for anything else and ObjectTooLargeError
    past the limit, judged on what is read, not on the size the file claims.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableObjectError(
            f"{where} is {_kind(info.st_mode)}, not an object pipes_bus wrote; it was not read.",
            url=url,
            key=key,
            reason="foreign",
        )
    if max_size is not None and info.st_size > max_size:
        raise ObjectTooLargeError.over_limit(url or where, key or "", info.st_size, max_size)
    limit = None if max_size is None else max_size + 1
    parts: list[bytes] = []
    got = 0
    while limit is None or got < limit:
        data = os.read(fd, 1 << 20 if limit is None else min(1 << 20, limit - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    if max_size is not None and got > max_size:
        raise ObjectTooLargeError.over_limit(url or where, key or "", got, max_size)
    return b"".join(parts)


class FileTransport(Transport):
    """Objects as files. Publication is atomic: temp file, fsync, link into place.

    Chunks are created with mode 0600: a follower must run as the writers' user (or root).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
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

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/")) if key else self.root

    @contextlib.contextmanager
    def _folder(self, parts: list[str], key: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``parts`` below the root, reached without following
        any symbolic link; FileNotFoundError if it does not exist (and ``create`` is off)."""
        if create:
            os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for part in parts:
                if part in ("", ".", ".."):
                    raise UnreadableObjectError(
                        f"{self.describe(key)} is not a key of this bus.", url=self.url, key=key
                    )
                try:
                    inner = os.open(
                        part, os.O_RDONLY | _NOFOLLOW | _DIRECTORY | _CLOEXEC, dir_fd=fd
                    )
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                    inner = os.open(
                        part, os.O_RDONLY | _NOFOLLOW | _DIRECTORY | _CLOEXEC, dir_fd=fd
                    )
                except OSError as exc:
                    if exc.errno in _LINK_ERRNOS:
                        raise UnreadableObjectError(
                            f"{self.describe('/'.join(parts))} is not a folder of this bus (a "
                            "symbolic link or a file); it is not followed.",
                            url=self.url,
                            key=key,
                            reason="foreign",
                        ) from exc
                    raise
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if not _WALK:
            return self._put_by_path(key, data)
        *parts, name = key.split("/")
        self.stats.count("put", sent=len(data))
        with (
            store_errors(url=self.url, key=key, op="write"),
            self._folder(parts, key, create=True) as folder,
        ):
            tmp = f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                0o600,
                dir_fd=folder,
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                try:
                    os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                except FileExistsError:
                    return False
                return True
            finally:
                os.unlink(tmp, dir_fd=folder)

    def _put_by_path(self, key: str, data: bytes) -> bool:  # pragma: no cover - no dir_fd
        import tempfile

        path = self._path(key)
        folder = os.path.dirname(path)
        self.stats.count("put", sent=len(data))
        with store_errors(url=self.url, key=key, op="write"):
            os.makedirs(folder, exist_ok=True)
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
        *parts, name = key.split("/")
        data = None
        try:
            with (
                store_errors(url=self.url, key=key, op="read"),
                self._opened(parts, name, key) as fd,
            ):
                if fd is not None:
                    data = read_regular_file(
                        fd, max_size=max_size, where=self.describe(key), url=self.url, key=key
                    )
        finally:
            self.stats.count("get", received=len(data) if data else 0)
        return data

    @contextlib.contextmanager
    def _opened(self, parts: list[str], name: str, key: str) -> Iterator[int | None]:
        flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
        try:
            if _WALK:
                with self._folder(parts, key) as folder:
                    fd = os.open(name, flags, dir_fd=folder)
            else:  # pragma: no cover - no dir_fd
                fd = os.open(self._path(key), flags)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        except PermissionError as exc:
            raise UnreadableObjectError(
                f"{self.describe(key)} cannot be read: permission denied. Chunks are created "
                "with mode 0600; follow the session as the writers' user.",
                url=self.url,
                key=key,
                reason="unreadable",
            ) from exc
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise UnreadableObjectError(
                    f"{self.describe(key)} is a symbolic link, not an object pipes_bus wrote; "
                    "it is not followed.",
                    url=self.url,
                    key=key,
                    reason="foreign",
                ) from exc
            raise
        try:
            yield fd
        finally:
            os.close(fd)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self.stats.count("list")
        parts = [p for p in prefix.split("/") if p] if prefix else []
        with store_errors(url=self.url, key=prefix, op="list"):
            try:
                if _WALK:
                    with self._folder(parts, prefix) as folder:
                        names = os.listdir(folder)
                else:  # pragma: no cover - no dir_fd
                    names = os.listdir(self._path(prefix))
            except (FileNotFoundError, NotADirectoryError):
                return []
        names = sorted(n for n in names if not n.startswith(_TEMP_PREFIX))
        return [n for n in names if n > after] if after is not None else names

    def delete(self, key: str) -> None:
        """Remove the file at ``key``, and the folders that leaves empty (never the root)."""
        self.stats.count("delete")
        *parts, name = key.split("/")
        with (
            store_errors(url=self.url, key=key, op="delete"),
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
        ):
            if _WALK:
                with self._folder(parts, key) as folder:
                    try:
                        os.unlink(name, dir_fd=folder)
                    except IsADirectoryError:
                        os.rmdir(name, dir_fd=folder)  # an empty folder a walk found
            else:  # pragma: no cover - no dir_fd
                os.unlink(self._path(key))
        self._prune(parts)

    def _prune(self, parts: _Parts) -> None:
        while parts:
            *outer, name = parts
            try:
                if _WALK:
                    with self._folder(outer, "/".join(parts)) as parent:
                        os.rmdir(name, dir_fd=parent)
                else:  # pragma: no cover - no dir_fd
                    os.rmdir(self._path("/".join(parts)))
            except (OSError, UnreadableObjectError):
                return  # not empty (or not a folder): it stays, and so do its parents
            parts = outer

    def walk(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Every file below ``prefix``; a symbolic link, FIFO, device or empty folder counts
        as an object of size 0 (deleting it unlinks it: nothing is followed)."""
        self.stats.count("list")
        parts = [p for p in prefix.split("/") if p]
        found: _Found = []
        with store_errors(url=self.url, key=prefix, op="list"):
            try:
                if _WALK:
                    with self._folder(parts, prefix) as folder:
                        self._walk_from(folder, "/".join(parts), found)
                else:  # pragma: no cover - no dir_fd
                    self._walk_by_path("/".join(parts), found)
            except (FileNotFoundError, NotADirectoryError):
                return
        yield from found

    def _walk_from(self, top: int, prefix: str, found: _Found) -> None:
        # Depth first with a stack of open folders (no recursion: a hostile tree may be
        # deep); a folder deeper than _MAX_DEPTH is listed as an object, and its delete fails.
        stack: list[tuple[int, str, Iterator[str]]] = [
            (os.dup(top), prefix, iter(sorted(os.listdir(top))))
        ]
        try:
            while stack:
                fd, where, names = stack[-1]
                name = next(names, None)
                if name is None:
                    os.close(stack.pop()[0])
                    continue
                if name.startswith(_TEMP_PREFIX):
                    continue
                key = f"{where}/{name}" if where else name
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) and len(stack) < _MAX_DEPTH:
                    inner = os.open(
                        name, os.O_RDONLY | _NOFOLLOW | _DIRECTORY | _CLOEXEC, dir_fd=fd
                    )
                    try:
                        listed = sorted(os.listdir(inner))
                    except BaseException:
                        os.close(inner)
                        raise
                    if listed:
                        stack.append((inner, key, iter(listed)))
                    else:
                        os.close(inner)
                        found.append((key, 0))  # an empty folder: deleting it removes it
                else:
                    found.append((key, info.st_size if stat.S_ISREG(info.st_mode) else 0))
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def _walk_by_path(self, prefix: str, found: _Found) -> None:  # pragma: no cover
        root = self._path(prefix)
        for folder, _, files in os.walk(root, followlinks=False):
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in sorted(files):
                if not name.startswith(_TEMP_PREFIX):
                    info = os.lstat(os.path.join(folder, name))
                    size = info.st_size if stat.S_ISREG(info.st_mode) else 0
                    found.append((f"{rel}/{name}" if rel != "." else name, size))
