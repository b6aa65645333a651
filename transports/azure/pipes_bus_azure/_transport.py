"""``az://``, ``abfs://`` and ``abfss://``: a bus in an Azure Blob Storage container."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any, ClassVar

import fsspec
from fsspec.asyn import sync

from pipes_bus.transports import BucketTransport, Capabilities

from ._errors import classify, detail, error_code

__all__ = ["AzureBlobTransport"]

# adlfs reads these itself; the Azure CLI's names are the fallback.
_ADLFS_ACCOUNT_SETTINGS = (
    "connection_string",
    "account_name",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_NAME",
)
_CONFIGURE = (
    " Configure an Azure storage account: set AZURE_STORAGE_CONNECTION_STRING, or "
    "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY (or a SAS token or an Azure "
    "identity), or pass connection_string=... / account_name=... as storage options."
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


class AzureBlobTransport(BucketTransport):
    """Objects in an Azure Blob Storage container.

    - Exclusive create is one Put Blob with ``If-None-Match: *``.
    - ``get`` is one Get Blob (ranged to ``max_size + 1`` bytes when a limit is given),
      straight through the Azure SDK: adlfs's listing cache is never involved (adlfs
      ignores ``ls(refresh=True)``).
    - ``list`` is List Blobs with ``delimiter="/"`` and ``start_from`` (a recent service
      feature; where the service or the SDK does not support it, the listing is filtered
      here instead). Azurite accepts and ignores it.
    - Each request is one attempt: pipes_bus's retry policy, not the SDK's, retries.

    Configuration is adlfs's: ``AZURE_STORAGE_CONNECTION_STRING``;
    ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY`` or
    ``AZURE_STORAGE_SAS_TOKEN`` (or the Azure CLI's ``AZURE_STORAGE_ACCOUNT`` and
    ``AZURE_STORAGE_KEY``); service principal variables or ``DefaultAzureCredential``;
    the account in an ``abfss://container@account.dfs.core.windows.net/`` URL;
    ``FSSPEC_AZ_*``; or storage options such as ``connection_string``, ``account_name``,
    ``account_key``, ``sas_token``, ``credential`` and ``anon``.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(shared=True, linger=0.25, poll=0.1)
    bucket_word: ClassVar[str] = "container"
    credentials_hint: ClassVar[str] = (
        "Check the Azure credentials this process uses (AZURE_STORAGE_CONNECTION_STRING, "
        "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or a SAS token, or an "
        "Azure identity) and that they may read and write this container."
    )
    #: Ask the service to start listings at ``after`` (turned off on the first refusal).
    use_start_from: bool = True

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        options: dict[str, Any] = {
            "use_listings_cache": False,
            "skip_instance_cache": True,
            **_cli_account(storage_options),
            **storage_options,
        }
        with self._opening(_CONFIGURE):
            self.fs, _ = fsspec.url_to_fs(url, **options)
        _single_attempt(self.fs.service_client)
        self._closed = False

    @property
    def container(self) -> str:
        """The container (the bucket, in :class:`BucketTransport`'s words)."""
        return self.bucket

    def _location(self, url: str) -> str:
        # abfss://container@account.dfs.core.windows.net/prefix names the account too.
        scheme = url.partition("://")[0]
        return str(fsspec.get_filesystem_class(scheme)._strip_protocol(url))

    def _blob(self, name: str) -> Any:
        return self.fs.service_client.get_blob_client(self.container, name)

    def _put(self, name: str, data: bytes) -> bool:
        sync(self.fs.loop, self._upload, name, data)
        return True

    async def _upload(self, name: str, data: bytes) -> None:
        # overwrite=False makes the SDK send If-None-Match: * (on the final commit, too,
        # for a blob large enough to go up in blocks).
        await self._blob(name).upload_blob(data, overwrite=False)

    def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        result: tuple[int, bytes | None] = sync(self.fs.loop, self._download, name, max_size)
        return result

    async def _download(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
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

    def _list(
        self, base: str, start_after: str | None, token: str | None
    ) -> tuple[Iterable[str], str | None]:
        start = start_after if self.use_start_from else None
        try:
            page: tuple[list[str], str | None] = sync(
                self.fs.loop, self._list_page, base, start, token
            )
        except Exception as exc:
            if start is None or not _start_from_refused(exc):
                raise
            self.use_start_from = False
            self.stats.count("list")  # the same page again, without start_from
            page = sync(self.fs.loop, self._list_page, base, None, token)
        return page

    async def _list_page(
        self, base: str, start: str | None, token: str | None
    ) -> tuple[list[str], str | None]:
        container = self.fs.service_client.get_container_client(self.container)
        options: dict[str, Any] = {"name_starts_with": base or None, "delimiter": "/"}
        if self.page_size is not None:
            options["results_per_page"] = self.page_size
        if start is not None:
            options["start_from"] = start  # inclusive; the base drops `after` itself
        pages = container.walk_blobs(**options).by_page(continuation_token=token)
        names: list[str] = []
        async for page in pages:
            names.extend([item.name async for item in page])
            break  # one request: the base asks for the next page with the token
        return names, pages.continuation_token

    def _delete(self, name: str) -> None:
        sync(self.fs.loop, self._remove, name)

    def _walk(self, base: str, token: str | None) -> tuple[Iterable[tuple[str, int]], str | None]:
        page: tuple[list[tuple[str, int]], str | None] = sync(
            self.fs.loop, self._walk_page, base, token
        )
        return page

    async def _walk_page(
        self, base: str, token: str | None
    ) -> tuple[list[tuple[str, int]], str | None]:
        container = self.fs.service_client.get_container_client(self.container)
        options: dict[str, Any] = {"name_starts_with": base or None}
        if self.page_size is not None:
            options["results_per_page"] = self.page_size
        pages = container.list_blobs(**options).by_page(continuation_token=token)
        found: list[tuple[str, int]] = []
        async for page in pages:
            found.extend([(item.name, int(item.size or 0)) async for item in page])
            break  # one request: the base asks for the next page with the token
        return found, pages.continuation_token

    async def _remove(self, name: str) -> None:
        await self._blob(name).delete_blob()

    def _classify(self, exc: BaseException) -> str:
        return classify(exc)

    def _detail(self, exc: BaseException) -> str:
        return detail(exc)

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
