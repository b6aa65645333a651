"""How Azure Blob Storage failures map onto pipes_bus's errors.

The Azure SDK raises ``azure.core.exceptions`` errors carrying the HTTP status
(``status_code``) and the storage error code (``error_code``: ``BlobNotFound``,
``ContainerNotFound``, ``AuthorizationFailure``, ``ServerBusy``, ...), so a missing
container is told from a missing blob without another request. The wording of the errors
is :class:`pipes_bus.transports.BucketTransport`'s.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Literal

from azure.core import exceptions as azure_errors

from pipes_bus import PermanentStoreError, TransientStoreError

__all__ = ["Verdict", "classify", "detail", "error_code"]

Verdict = Literal[
    "exists",  # a conditional create found the name taken
    "missing_key",  # the blob does not exist (the container does)
    "missing_bucket",  # the container does not exist
    "denied",  # credentials missing, wrong, or not allowed
    "transient",  # throttling, 5xx, timeouts, connection resets: retry
    "permanent",  # anything else retrying will not fix
]

_EXISTS = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
_MISSING_KEY = frozenset({"BlobNotFound", "ResourceNotFound"})
_MISSING_CONTAINER = frozenset({"ContainerNotFound", "ContainerBeingDeleted"})
_DENIED = frozenset(
    {
        "AccountIsDisabled",
        "AuthenticationFailed",
        "AuthorizationFailure",
        "AuthorizationPermissionMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationSourceIPMismatch",
        "InsufficientAccountPermissions",
        "InvalidAuthenticationInfo",
        "KeyBasedAuthenticationNotPermitted",
        "NoAuthenticationInformation",
    }
)
_TRANSIENT = frozenset({"ServerBusy", "OperationTimedOut", "InternalError", "IngressOverLimit"})
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
    """The storage error code and HTTP status behind ``exc``."""
    for link in _chain(exc):
        if isinstance(link, azure_errors.HttpResponseError):
            code: Any = getattr(link, "error_code", None)
            code = getattr(code, "value", code)  # StorageErrorCode is a str enum
            status = getattr(link, "status_code", None)
            return (str(code) if code else None), (int(status) if status else None)
    return None, None


def classify(exc: BaseException) -> Verdict:
    """What a failure of an Azure Blob request means for pipes_bus."""
    if isinstance(exc, TransientStoreError):
        return "transient"
    if isinstance(exc, PermanentStoreError):
        return "permanent"
    code, status = error_code(exc)
    if isinstance(exc, FileExistsError | azure_errors.ResourceExistsError) or code in _EXISTS:
        return "exists"
    if code in _MISSING_CONTAINER:
        return "missing_bucket"
    if code in _MISSING_KEY or isinstance(exc, azure_errors.ResourceNotFoundError):
        return "missing_key"
    if code in _DENIED or isinstance(exc, azure_errors.ClientAuthenticationError):
        return "denied"
    if status in (401, 403) or isinstance(exc, PermissionError):
        return "denied"
    if code in _TRANSIENT:
        return "transient"
    if status is not None:
        return "transient" if status >= 500 or status in (408, 409, 429) else "permanent"
    for link in _chain(exc):
        if isinstance(link, azure_errors.ServiceRequestError | azure_errors.ServiceResponseError):
            return "transient"  # connection refused or reset, timeouts, truncated responses
        if isinstance(link, asyncio.TimeoutError | TimeoutError | ConnectionError):
            return "transient"
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS:
            return "transient"
        if type(link).__module__.split(".")[0] == "aiohttp":
            return "transient"
    return "permanent"


def detail(exc: BaseException) -> str:
    """A failed request in a few words: the storage error code and the first line of the
    SDK's message (the rest repeats the request and the response)."""
    code, _ = error_code(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{code or type(exc).__name__}: {first}".rstrip(": ")
