"""How S3 failures map onto pipes_bus's errors.

s3fs turns botocore's ``ClientError`` into ``OSError`` subclasses (``FileNotFoundError``
for both a missing key and a missing bucket, ``OSError(EBUSY)`` for 409, 503 and SlowDown)
and keeps the original as ``__cause__``. The S3 error code and HTTP status are read from
there, so a missing bucket is never mistaken for a missing key, and a conditional-write
conflict (409) is retried rather than reported as "exists". :func:`verdict` holds what S3's
codes mean, for any client; :func:`classify` reads them out of s3fs's and botocore's errors.
The wording of the errors is :class:`pipes_bus.transports.BucketTransport`'s.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Literal

import botocore.exceptions

from pipes_bus import PermanentStoreError, TransientStoreError

__all__ = ["Verdict", "classify", "detail", "error_code", "verdict"]

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


def verdict(code: str | None, status: int | None) -> Verdict | None:
    """What an S3 error code and HTTP status mean, whichever client received them; None
    when there is neither (the request got no answer from S3)."""
    if code == "PreconditionFailed":
        return "exists"
    if code in _MISSING_BUCKET:
        return "missing_bucket"
    if code in _MISSING_KEY:
        return "missing_key"
    if code in _CONFLICT or status == 409:
        return "conflict"
    if code in _DENIED or status in (401, 403):
        return "denied"
    if code in _TRANSIENT or (status is not None and (status >= 500 or status in (408, 429))):
        return "transient"
    return "permanent" if code is not None else None


def classify(exc: BaseException) -> Verdict:
    """What a failure of an S3 request (through s3fs and botocore) means for pipes_bus."""
    if isinstance(exc, TransientStoreError):
        return "transient"
    if isinstance(exc, PermanentStoreError):
        return "permanent"
    if isinstance(exc, FileExistsError):
        return "exists"
    answer = verdict(*error_code(exc))
    if answer is not None:
        return answer
    # No answer from S3 to go by: the client's own failure.
    if isinstance(exc, FileNotFoundError):
        return "missing_key"
    if isinstance(exc, PermissionError):
        return "denied"
    chain = _chain(exc)
    if any(isinstance(link, _NO_CREDENTIALS) for link in chain):
        return "denied"
    for link in chain:
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


def detail(exc: BaseException) -> str:
    """A failed request in a few words: S3's error code and message where there are some."""
    code, _ = error_code(exc)
    text = f"{code or type(exc).__name__}: {_message(exc)}".rstrip(": ")
    return " ".join(text.split())


def _message(exc: BaseException) -> str:
    for link in _chain(exc):
        response: Any = getattr(link, "response", None)
        if isinstance(response, dict):
            message = response.get("Error", {}).get("Message")
            if message:
                return str(message)
    return str(exc)
