"""How Azure Blob Storage failures map onto pipes_bus's errors.

The Azure SDK raises ``azure.core.exceptions`` errors carrying the HTTP status
(``status_code``) and the storage error code (``error_code``: ``BlobNotFound``,
``ContainerNotFound``, ``AuthorizationFailure``, ``ServerBusy``, ...), so a missing
container is told from a missing blob without another request.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Literal

from azure.core import exceptions as azure_errors

from pipes_bus import PermanentStoreError, StoreError, TransientStoreError
from pipes_bus._errors import translate_store_error

__all__ = ["Verdict", "classify", "error_code", "translate"]

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


def translate(
    exc: BaseException, *, url: str, container: str, key: str | None, op: str
) -> StoreError:
    """The pipes_bus error for a failed Azure request, naming the URL and saying what to do."""
    if isinstance(exc, StoreError):
        return exc
    where = f"{url.rstrip('/')}/{key}" if key else url
    verdict = classify(exc)
    code, _ = error_code(exc)
    detail = code or type(exc).__name__
    if verdict == "missing_bucket":
        return PermanentStoreError(
            f"Cannot {op} {where}: the container {container!r} does not exist. Create it or "
            "correct the bus URL.",
            url=url,
            key=key,
        )
    if verdict == "denied":
        return PermanentStoreError(
            f"Cannot {op} {where}: access was refused ({detail}). Check the Azure "
            "credentials this process uses (AZURE_STORAGE_CONNECTION_STRING, "
            "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or a SAS token, or "
            "an Azure identity) and that they may read and write this container.",
            url=url,
            key=key,
        )
    if verdict == "transient":
        return TransientStoreError(
            f"Cannot {op} {where}: the store had a transient failure ({detail}: "
            f"{_first_line(exc)}).",
            url=url,
            key=key,
        )
    error = translate_store_error(exc, url=url, key=key, op=op)
    if isinstance(error, TransientStoreError):
        return PermanentStoreError(str(error), url=url, key=key)
    return error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
