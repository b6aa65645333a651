"""Every error pipes_bus raises, in one tree.

    PipesBusError
    ├── ConfigurationError          a URL, option or environment value is unusable
    │   ├── UnknownSchemeError      no transport can serve the URL's scheme
    │   ├── NotInSessionError       a worker was opened outside a session
    │   └── LaunchError             a platform refused the work (image missing, job rejected)
    ├── EncodeError                 a message cannot be encoded (raised at the call site)
    │   └── MessageTooLargeError    an encoded message is over the size limit
    ├── StoreError                  a store operation failed (carries url and key)
    │   ├── TransientStoreError     worth retrying: throttling, 5xx, timeouts, resets
    │   └── PermanentStoreError     retrying will not help: missing bucket, access denied
    │       └── UnreadableObjectError   one object cannot be read; others may be fine
    │           └── ObjectTooLargeError an object is over the size a reader accepts
    ├── CommandFailed               the program `pipes-bus exec` ran did not succeed
    ├── DeliveryError               a writer could not deliver messages; names which
    ├── BufferFullError             a writer's buffer is full and it was told not to block
    └── WriterClosedError           a writer was used after close()

    PipesBusWarning                 works, but not as well as it could (a missing plugin)

Lower-layer errors (OSError, botocore, azure, google) are translated in ONE place:
:func:`translate_store_error`, used by every built-in transport.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "BufferFullError",
    "CommandFailed",
    "ConfigurationError",
    "DeliveryError",
    "EncodeError",
    "LaunchError",
    "MessageTooLargeError",
    "NotInSessionError",
    "ObjectTooLargeError",
    "PermanentStoreError",
    "PipesBusError",
    "PipesBusWarning",
    "StoreError",
    "TransientStoreError",
    "UnknownSchemeError",
    "UnreadableObjectError",
    "WriterClosedError",
]


class PipesBusError(Exception):
    """Root of every error raised by pipes_bus."""


class PipesBusWarning(UserWarning):
    """Something works, but not as well as it could (e.g. a missing plugin)."""


class ConfigurationError(PipesBusError, ValueError):
    """A URL, option or environment value cannot be used."""


class UnknownSchemeError(ConfigurationError):
    """No transport is registered for a URL's scheme."""


class NotInSessionError(ConfigurationError):
    """A worker was opened without the environment a session injects."""


class LaunchError(ConfigurationError):
    """A launcher could not start the work: the platform is unreachable, or it refused the
    job (an image that does not exist, a partition Slurm does not know, ...)."""


class EncodeError(PipesBusError, TypeError):
    """A message could not be encoded; nothing was written for it."""


class MessageTooLargeError(EncodeError):
    """An encoded message is larger than the writer accepts."""


class StoreError(PipesBusError, OSError):
    """A store operation failed.

    ``url`` is the store location and ``key`` the object involved (or ``None``).
    """

    def __init__(self, message: str, *, url: str = "", key: str | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TransientStoreError(StoreError):
    """A store operation failed in a way that is worth retrying."""


class PermanentStoreError(StoreError):
    """A store operation failed in a way that retrying will not fix."""


class UnreadableObjectError(PermanentStoreError):
    """One object cannot be read; other objects of the store may be fine.

    ``reason`` is the fault a reader reports for it: ``foreign`` (not a regular object: a
    folder, a FIFO, a device, a symbolic link), ``unreadable`` (access to it is denied) or
    ``too_large``.
    """

    def __init__(
        self, message: str, *, url: str = "", key: str | None = None, reason: str = "unreadable"
    ) -> None:
        super().__init__(message, url=url, key=key)
        self.reason = reason


class ObjectTooLargeError(UnreadableObjectError):
    """An object is larger than the reader accepts; it was not read into memory."""

    def __init__(self, message: str, *, url: str = "", key: str | None = None, size: int = 0):
        super().__init__(message, url=url, key=key, reason="too_large")
        self.size = size

    @classmethod
    def over_limit(cls, url: str, key: str, size: int, limit: int) -> ObjectTooLargeError:
        """The error a transport raises for ``key`` at ``url``, ``size`` bytes over ``limit``."""
        return cls(
            f"{url.rstrip('/')}/{key} is {size} bytes, over the {limit}-byte limit; "
            "it was not read. Raise max_chunk_bytes if such chunks are expected.",
            url=url,
            key=key,
            size=size,
        )


class CommandFailed(PipesBusError):
    """The command run by ``pipes-bus exec`` did not succeed: it exited non-zero, died of a
    signal, or could not be started. ``status`` is the status exec exits with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeliveryError(PipesBusError):
    """A writer could not deliver some messages to the store.

    ``first`` and ``last`` are the message indices (inclusive) that were not
    delivered; every message before ``first`` was delivered.
    """

    def __init__(self, message: str, *, first: int = 0, last: int = -1) -> None:
        super().__init__(message)
        self.first = first
        self.last = last

    @property
    def undelivered(self) -> int:
        """How many messages were not delivered."""
        return max(0, self.last - self.first + 1)


class BufferFullError(PipesBusError):
    """A writer's buffer is full and it was configured to raise instead of block."""


class WriterClosedError(PipesBusError):
    """A writer was used after it was closed."""


# --- translation of lower-layer errors ---------------------------------------------------

_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNABORTED,
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.EHOSTUNREACH,
    errno.EINTR,
    errno.ENETDOWN,
    errno.ENETRESET,
    errno.ENETUNREACH,
    errno.EPIPE,
    errno.ETIMEDOUT,
}
_PERMANENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EROFS,
    errno.ENOSPC,
}
_TRANSIENT_WORDS = (
    "slowdown",
    "slow down",
    "throttl",
    "toomanyrequests",
    "too many requests",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "internal error",
    "requesttimeout",
    "timed out",
    "timeout",
    "connection reset",
    "connection aborted",
    "connection refused",
    "server disconnected",
    "broken pipe",
    "conditionalrequestconflict",
    "operationaborted",
    "bad gateway",
    "gateway timeout",
)
_PERMANENT_WORDS = (
    "nosuchbucket",
    "no such bucket",
    "bucket does not exist",
    "containernotfound",
    "container not found",
    "accessdenied",
    "access denied",
    "forbidden",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "authorizationfailure",
    "authenticationfailed",
    "invalid credentials",
    "unauthorized",
    # botocore's client-side verdicts: no amount of retrying supplies credentials.
    "nocredentialserror",
    "partialcredentialserror",
    "paramvalidationerror",
    "noregionerror",
    "invalidconfigerror",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a lower-layer error is worth retrying."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, PermanentStoreError | FileNotFoundError | PermissionError):
        return False
    if isinstance(exc, TimeoutError | ConnectionError):  # socket.timeout is TimeoutError
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
        if exc.errno in _PERMANENT_ERRNOS:
            return False
    text = f"{type(exc).__name__} {exc}".lower()
    if any(word in text for word in _PERMANENT_WORDS):
        return False
    if any(word in text for word in _TRANSIENT_WORDS):
        return True
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if isinstance(status, int):
        return status >= 500 or status in (408, 409, 429)
    # An unknown failure from a network library is more often a blip than a verdict;
    # the retry budget is bounded, so erring on "transient" delays a report, never loses it.
    module = type(exc).__module__ or ""
    return module.split(".")[0] in {"aiohttp", "botocore", "urllib3", "requests", "http"}


def translate_store_error(exc: BaseException, *, url: str, key: str | None, op: str) -> StoreError:
    """Map any lower-layer error to a :class:`StoreError` naming the URL and key."""
    if isinstance(exc, StoreError):
        return exc
    where = f"{url.rstrip('/')}/{key}" if key else url
    from pipes_bus._redact import redact

    detail = redact(f"{type(exc).__name__}: {exc}".strip())
    if is_transient(exc):
        return TransientStoreError(
            f"Cannot {op} {where}: the store had a transient failure ({detail}).",
            url=url,
            key=key,
        )
    return PermanentStoreError(
        f"Cannot {op} {where}: {detail}. Check that the location exists and that "
        "the credentials in this environment may read and write it.",
        url=url,
        key=key,
    )


@contextmanager
def store_errors(*, url: str, key: str | None, op: str) -> Iterator[None]:
    """Re-raise any lower-layer failure inside the block as a :class:`StoreError`."""
    try:
        yield
    except (StoreError, FileExistsError):
        raise
    except ImportError:
        # A store backend that is not installed is for open_transport to explain (with an
        # install hint), not a store failure to retry or blame on credentials.
        raise
    except Exception as exc:
        raise translate_store_error(exc, url=url, key=key, op=op) from exc
