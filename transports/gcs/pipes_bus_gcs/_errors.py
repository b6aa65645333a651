"""How Google Cloud Storage failures map onto pipes_bus's errors.

gcsfs raises ``FileNotFoundError`` for every 404 (a missing object and a missing bucket
alike), ``FileExistsError`` for 412, ``OSError("Forbidden: ...")`` for 403,
``ValueError("Bad Request: ...")`` for invalid requests, ``requests``' ``ProxyError`` for
502 and ``gcsfs.retry.HttpError`` (with ``.code``) for the rest, after its own retries of
429 and 5xx (turned off by the transport: see ``_single_attempt``). The transport tells a
missing bucket from a missing object with one extra request, once (see ``GCSTransport``).
The wording of the errors is :class:`pipes_bus.transports.BucketTransport`'s.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Literal

from pipes_bus import PermanentStoreError, TransientStoreError

__all__ = ["Verdict", "classify", "status_of"]

Verdict = Literal[
    "exists",  # a conditional create found the name taken (412)
    "missing",  # 404: the object, or the whole bucket, does not exist
    "denied",  # credentials missing, wrong, or not allowed
    "transient",  # throttling, 5xx, timeouts, connection resets: retry
    "permanent",  # anything else retrying will not fix
]

_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
)
_DENIED_GRANTS = ("invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a gcsfs or aiohttp error, where it carries one."""
    for link in _chain(exc):
        for attr in ("code", "status"):
            value = getattr(link, attr, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def classify(exc: BaseException) -> Verdict:
    """What a failure of a GCS request means for pipes_bus."""
    if isinstance(exc, TransientStoreError):
        return "transient"
    if isinstance(exc, PermanentStoreError):
        return "permanent"
    if isinstance(exc, FileExistsError):
        return "exists"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    status = status_of(exc)
    if status == 412:
        return "exists"
    if status == 404:
        return "missing"
    if status in (401, 403) or isinstance(exc, PermissionError):
        return "denied"
    if str(exc).startswith("Forbidden"):
        return "denied"
    if status is not None:
        return "transient" if status >= 500 or status in (408, 409, 429) else "permanent"
    for link in _chain(exc):
        kind = type(link)
        module = kind.__module__.split(".")[0]
        if module == "google" and kind.__name__ == "DefaultCredentialsError":
            return "denied"
        if module == "google" and kind.__name__ == "RefreshError":
            text = str(link).lower()
            return "denied" if any(g in text for g in _DENIED_GRANTS) else "transient"
        if isinstance(link, asyncio.TimeoutError | TimeoutError | ConnectionError):
            return "transient"
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS:
            return "transient"
        if module in ("aiohttp", "requests", "urllib3"):
            # Connection failures, resets, timeouts; and 502, which gcsfs raises as
            # requests' ProxyError.
            return "transient"
        if kind.__name__ in ("ChecksumError",):
            return "transient"
    if isinstance(exc, ValueError):
        return "permanent"  # gcsfs's "Bad Request: ..." (an invalid name, for instance)
    return "permanent"
