"""``az://``, ``abfs://`` and ``abfss://``: a bus in an Azure Blob Storage container."""

from __future__ import annotations

import builtins
import contextlib
import os
from typing import Any, ClassVar

import fsspec
from fsspec.asyn import sync

from pipes_bus import ConfigurationError, ObjectTooLargeError, StoreError
from pipes_bus.transports import Capabilities, Transport

from ._errors import classify, error_code, translate

__all__ = ["AzureBlobTransport"]

# adlfs reads these itself; the Azure CLI's names are the fallback.
_ADLFS_ACCOUNT_SETTINGS = (
    "connection_string",
    "account_name",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
)


def _cli_account(options: dict[str, Any]) -> dict[str, Any]:
    """``AZURE_STORAGE_ACCOUNT``/``AZURE_STORAGE_KEY`` (the Azure CLI's), if nothing else is set."""
    if any(options.get(name) or os.environ.get(name) for name in _ADLFS_ACCOUNT_SETTINGS):
        return {}
    account = os.environ.get("AZURE_STORAGE_ACCOUNT")
    if not account:
        return {}
    extra: dict[str, Any] = {"account_name": account}
    key = os.environ.get("AZURE_STORAGE_KEY")
    if key and not options.get("account_key") and not os.environ.get("AZURE_STORAGE_ACCOUNT_KEY"):
        extra["account_key"] = key
    return extra


def _single_attempt(client: Any) -> None:
    """Make each of this client's requests one attempt.

    The Azure SDK retries a failed request up to ten times, waiting 15 s before the first
    retry, so a single blip could stall a writer or a reader for minutes before pipes_bus's
    own retry policy saw it. Its retry policy object sits in the client's pipeline, shared
    by the container and blob clients made from it.
    """
    policy = getattr(getattr(client, "_config", None), "retry_policy", None)
    if policy is not None:
        policy.total_retries = 0
        for name in ("connect_retries", "read_retries", "status_retries"):
            if hasattr(policy, name):
                setattr(policy, name, 0)


class AzureBlobTransport(Transport):
    """Objects in an Azure Blob Storage container.

    - Exclusive create is one Put Blob with ``If-None-Match: *``.
    - ``get`` is one Get Blob (ranged to ``max_size + 1`` bytes when a limit is given),
      straight through the Azure SDK: adlfs's listing cache is never involved (adlfs
      ignores ``ls(refresh=True)``).
    - ``list`` is List Blobs with ``delimiter="/"`` and ``start_from`` (a recent service
      feature; where the service or the SDK does not support it, the listing is filtered
      here instead). Azurite accepts and ignores it.

    Configuration is adlfs's: ``AZURE_STORAGE_CONNECTION_STRING``;
    ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY`` or
    ``AZURE_STORAGE_SAS_TOKEN`` (or the Azure CLI's ``AZURE_STORAGE_ACCOUNT`` and
    ``AZURE_STORAGE_KEY``); service principal variables or ``DefaultAzureCredential``;
    the account in an ``abfss://container@account.dfs.core.windows.net/`` URL;
    ``FSSPEC_AZ_*``; or storage options such as ``connection_string``, ``account_name``,
    ``account_key``, ``sas_token``, ``credential`` and ``anon``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("az", "abfs", "abfss")
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_create=True, list_after=True, shared=True, linger=0.25, poll=0.1
    )
    #: Ask the service to start listings at ``after`` (turned off on the first refusal).
    use_start_from: bool = True
    #: Names per listing page; None leaves it to the service (up to 5,000).
    page_size: int | None = None

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        options: dict[str, Any] = {
            "use_listings_cache": False,
            "skip_instance_cache": True,
            **_cli_account(storage_options),
            **storage_options,
        }
        try:
            self.fs, root = fsspec.url_to_fs(url, **options)
        except ImportError:
            raise
        except Exception as exc:
            raise ConfigurationError(
                f"Cannot open {url}: {exc}. Configure an Azure storage account: set "
                "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME with "
                "AZURE_STORAGE_ACCOUNT_KEY (or a SAS token or an Azure identity), or pass "
                "connection_string=... / account_name=... as storage options."
            ) from exc
        _single_attempt(self.fs.service_client)
        container, _, prefix = str(root).strip("/").partition("/")
        if not container:
            raise ConfigurationError(f"{url!r} names no container; write az://CONTAINER/PREFIX.")
        self.container = container
        self.prefix = prefix.strip("/")
        self._closed = False

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def _blob(self, name: str) -> Any:
        return self.fs.service_client.get_blob_client(self.container, name)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.stats.count("put", sent=len(data))
        try:
            sync(self.fs.loop, self._put, self._key(key), data)
        except Exception as exc:
            if classify(exc) == "exists":
                return False
            raise self._error(exc, key, "write") from exc
        return True

    async def _put(self, name: str, data: bytes) -> None:
        # overwrite=False makes the SDK send If-None-Match: * (on the final commit, too,
        # for a blob large enough to go up in blocks).
        await self._blob(name).upload_blob(data, overwrite=False)

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        try:
            result: tuple[int, bytes | None] = sync(
                self.fs.loop, self._get, self._key(key), max_size
            )
            size, data = result
        except Exception as exc:
            self.stats.count("get")
            if classify(exc) == "missing_key":
                return None
            raise self._error(exc, key, "read") from exc
        self.stats.count("get", received=len(data) if data is not None else 0)
        if data is None:  # only ever with a max_size: the object is over it
            raise ObjectTooLargeError.over_limit(self.url, key, size, max_size or 0)
        return data

    async def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        blob = self._blob(name)
        if max_size is None:
            downloader = await blob.download_blob(max_concurrency=1)
            data = bytes(await downloader.readall())
            return len(data), data
        try:
            downloader = await blob.download_blob(offset=0, length=max_size + 1, max_concurrency=1)
        except Exception as exc:
            code, status = error_code(exc)
            if status == 416 or code == "InvalidRange":  # no byte 0: the blob is empty
                return 0, b""
            raise
        size = _total_size(downloader.properties)
        if size > max_size:
            return size, None
        data = bytes(await downloader.readall())
        return len(data), data

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        base = self._key(prefix)
        base = f"{base}/" if base else ""
        start = base + after if after is not None and self.use_start_from else None
        try:
            found = sync(self.fs.loop, self._list, base, start)
        except Exception as exc:
            if start is not None and _start_from_refused(exc):
                self.use_start_from = False
                return self.list(prefix, after=after)
            raise self._error(exc, prefix, "list") from exc
        names = {name[len(base) :].rstrip("/") for name in found}
        names.discard("")
        return sorted(n for n in names if "/" not in n and (after is None or n > after))

    async def _list(self, base: str, start: str | None) -> builtins.list[str]:
        container = self.fs.service_client.get_container_client(self.container)
        options: dict[str, Any] = {"name_starts_with": base or None, "delimiter": "/"}
        if self.page_size is not None:
            options["results_per_page"] = self.page_size
        if start is not None:
            options["start_from"] = start  # inclusive; `after` itself is dropped by list()
        names: builtins.list[str] = []
        pages = container.walk_blobs(**options).by_page()
        self.stats.count("list")
        first = True
        async for page in pages:
            if not first:
                self.stats.count("list")
            first = False
            async for item in page:
                names.append(item.name)
        return names

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        try:
            sync(self.fs.loop, self._delete, self._key(key))
        except Exception as exc:
            if classify(exc) == "missing_key":
                return
            raise self._error(exc, key, "delete") from exc

    async def _delete(self, name: str) -> None:
        await self._blob(name).delete_blob()

    def close(self) -> None:
        """Close this transport's service client and its connections."""
        if self._closed:
            return
        self._closed = True
        client = getattr(self.fs, "service_client", None)
        if client is not None:
            # Best effort, as adlfs's own finalizer.
            with contextlib.suppress(Exception):
                sync(self.fs.loop, client.close, timeout=5)

    def _error(self, exc: BaseException, key: str | None, op: str) -> StoreError:
        return translate(exc, url=self.url, container=self.container, key=key or None, op=op)


def _total_size(properties: Any) -> int:
    """The blob's whole size: from ``Content-Range: bytes 0-N/TOTAL`` on a ranged read."""
    content_range = getattr(properties, "content_range", None)
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    return int(properties.size)


def _start_from_refused(exc: BaseException) -> bool:
    """Whether the SDK or the service rejected the ``start_from`` listing option."""
    if isinstance(exc, TypeError) and "start_from" in str(exc):
        return True
    code, status = error_code(exc)
    text = str(exc).lower()
    return status == 400 and (
        "startfrom" in text or "start_from" in text or code in ("InvalidQueryParameterValue",)
    )
