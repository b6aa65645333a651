"""How S3 failures map onto pipes_bus's errors.

s3fs turns botocore's ``ClientError`` into ``OSError`` subclasses (``FileNotFoundError``
for both a missing key and a missing bucket, ``OSError(EBUSY)`` for 409, 503 and SlowDown)
and keeps the original as ``__cause__``. The S3 error code and HTTP status are read from
there, so a missing bucket is never mistaken for a missing key, and a conditional-write
conflict (409) is retried rather than reported as "exists".
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Literal

import botocore.exceptions

from pipes_bus import PermanentStoreError, StoreError, TransientStoreError
from pipes_bus._errors import translate_store_error

__all__ = ["Verdict", "classify", "error_code", "translate"]

Verdict = Literal[
    "exists",  # a conditional create found the key taken
    "missing_key",  # the object does not exist (the bucket does)
    "missing_bucket",  # the bucket does not exist, or these credentials cannot see it
    "conflict",  # 409: a concurrent conditional write is in flight; retry
    "denied",  # credentials missing, wrong, expired, or not allowed
    "transient",  # throttling, 5xx, timeouts, connection resets: retry
    "permanent",  # anything else retrying will not fix
]

_MISSING_BUCKET = frozenset({"NoSuchBucket"})
_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
        "UnauthorizedAccess",
        "401",
        "403",
    }
)
_CONFLICT = frozenset({"ConditionalRequestConflict", "OperationAborted", "409"})
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",  # botocore corrects its clock offset on the next attempt
        "BadGateway",
        "GatewayTimeout",
        "500",
        "502",
        "503",
        "504",
    }
)
_NO_CREDENTIALS = (
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ProfileNotFound,
)
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # connect timeouts, refused, closed
    botocore.exceptions.HTTPClientError,  # read timeouts, resets, truncated bodies
    asyncio.TimeoutError,
    TimeoutError,
    ConnectionError,
)
_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
)


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def error_code(exc: BaseException) -> tuple[str | None, int | None]:
    """The S3 error code and HTTP status behind ``exc`` (through s3fs's translation)."""
    for link in _chain(exc):
        response: Any = getattr(link, "response", None)
        if isinstance(response, dict) and ("Error" in response or "ResponseMetadata" in response):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return (str(code) if code else None), (int(status) if status else None)
    return None, None


def classify(exc: BaseException) -> Verdict:
    """What a failure of an S3 request means for pipes_bus."""
    if isinstance(exc, TransientStoreError):
        return "transient"
    if isinstance(exc, PermanentStoreError):
        return "permanent"
    code, status = error_code(exc)
    if isinstance(exc, FileExistsError) or code == "PreconditionFailed":
        return "exists"
    if code in _MISSING_BUCKET:
        return "missing_bucket"
    if code in _MISSING_KEY or (code is None and isinstance(exc, FileNotFoundError)):
        return "missing_key"
    if code in _CONFLICT or status == 409:
        return "conflict"
    if code in _DENIED or status in (401, 403) or isinstance(exc, PermissionError):
        return "denied"
    if any(isinstance(link, _NO_CREDENTIALS) for link in _chain(exc)):
        return "denied"
    if code in _TRANSIENT or (status is not None and (status >= 500 or status in (408, 429))):
        return "transient"
    if code is not None:
        return "permanent"
    for link in _chain(exc):
        if isinstance(link, _TRANSIENT_TYPES):
            return "transient"
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS:
            return "transient"
        if isinstance(link, botocore.exceptions.BotoCoreError):
            # Parameter validation, unknown region and the like: a retry sends the same.
            return "permanent"
        if type(link).__module__.split(".")[0] == "aiohttp":
            return "transient"
    return "permanent"


def translate(exc: BaseException, *, url: str, bucket: str, key: str | None, op: str) -> StoreError:
    """The pipes_bus error for a failed S3 request, naming the URL and saying what to do."""
    if isinstance(exc, StoreError):
        return exc
    where = f"{url.rstrip('/')}/{key}" if key else url
    verdict = classify(exc)
    code, _ = error_code(exc)
    detail = f"{code or type(exc).__name__}: {_message(exc)}".rstrip(": ")
    if verdict == "missing_bucket":
        return PermanentStoreError(
            f"Cannot {op} {where}: the bucket {bucket!r} does not exist, or these credentials "
            "cannot see it. Create the bucket or correct the bus URL.",
            url=url,
            key=key,
        )
    if verdict == "denied":
        return PermanentStoreError(
            f"Cannot {op} {where}: access was refused ({detail}). Check the AWS credentials "
            "this process uses (AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "its role) and that they may read and write this location.",
            url=url,
            key=key,
        )
    if verdict in ("conflict", "transient"):
        return TransientStoreError(
            f"Cannot {op} {where}: the store had a transient failure ({detail}).",
            url=url,
            key=key,
        )
    if verdict == "permanent" and code is not None:
        return PermanentStoreError(
            f"Cannot {op} {where}: S3 refused the request ({detail}).", url=url, key=key
        )
    # No S3 code to go by: let the core's generic rules decide, with its wording.
    error = translate_store_error(exc, url=url, key=key, op=op)
    if verdict == "permanent" and isinstance(error, TransientStoreError):
        return PermanentStoreError(str(error), url=url, key=key)
    return error


def _message(exc: BaseException) -> str:
    for link in _chain(exc):
        response: Any = getattr(link, "response", None)
        if isinstance(response, dict):
            message = response.get("Error", {}).get("Message")
            if message:
                return str(message)
    return str(exc)
