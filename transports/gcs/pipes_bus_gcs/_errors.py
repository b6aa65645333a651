"""How Google Cloud Storage failures map onto pipes_bus's errors.

gcsfs raises ``FileNotFoundError`` for every 404 (a missing object and a missing bucket
alike), ``FileExistsError`` for 412, ``OSError("Forbidden: ...")`` for 403,
``ValueError("Bad Request: ...")`` for invalid requests, ``requests``' ``ProxyError`` for
502 and ``gcsfs.retry.HttpError`` (with ``.code``) for the rest, after its own retries of
429 and 5xx. The transport tells a missing bucket from a missing object with one extra
request, once (see ``GCSTransport``).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Literal

from pipes_bus import PermanentStoreError, StoreError, TransientStoreError
from pipes_bus._errors import translate_store_error

__all__ = ["Verdict", "classify", "status_of", "translate"]

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


def translate(exc: BaseException, *, url: str, bucket: str, key: str | None, op: str) -> StoreError:
    """The pipes_bus error for a failed GCS request, naming the URL and saying what to do."""
    if isinstance(exc, StoreError):
        return exc
    where = f"{url.rstrip('/')}/{key}" if key else url
    verdict = classify(exc)
    detail = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if verdict == "missing":
        return missing_bucket(url=url, bucket=bucket, key=key, op=op)
    if verdict == "denied":
        return PermanentStoreError(
            f"Cannot {op} {where}: access was refused ({_short(detail)}). Check the Google "
            "credentials this process uses (GOOGLE_APPLICATION_CREDENTIALS, gcloud's "
            "application-default login, or the machine's service account; token='anon' "
            "for an emulator) and that they may read and write this location.",
            url=url,
            key=key,
        )
    if verdict == "transient":
        return TransientStoreError(
            f"Cannot {op} {where}: the store had a transient failure ({_short(detail)}).",
            url=url,
            key=key,
        )
    error = translate_store_error(exc, url=url, key=key, op=op)
    if isinstance(error, TransientStoreError):
        return PermanentStoreError(str(error), url=url, key=key)
    return error


def missing_bucket(*, url: str, bucket: str, key: str | None, op: str) -> PermanentStoreError:
    """The error for a bucket that does not exist (or that these credentials cannot see)."""
    where = f"{url.rstrip('/')}/{key}" if key else url
    return PermanentStoreError(
        f"Cannot {op} {where}: the bucket {bucket!r} does not exist, or these credentials "
        "cannot see it. Create the bucket or correct the bus URL.",
        url=url,
        key=key,
    )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
