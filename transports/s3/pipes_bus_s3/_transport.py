"""``s3://`` and ``s3a://``: a bus in an S3 bucket, through s3fs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, ClassVar

import fsspec
from fsspec.asyn import sync

from pipes_bus.transports import BucketTransport, Capabilities

from ._errors import classify, detail, error_code

__all__ = ["S3Transport"]


class S3Transport(BucketTransport):
    """Objects in an S3 bucket (AWS, or any S3-compatible server).

    - Exclusive create is a conditional PUT (``If-None-Match: *``, one request). A 409
      ``ConditionalRequestConflict`` (a concurrent conditional write in flight) is
      retried here a few times, then raised as ``TransientStoreError``.
    - ``get`` is one GET, never a HEAD or a listing first, so a key that appears after
      a miss is seen at once; with ``max_size``, a ranged GET of ``max_size + 1`` bytes
      whose body is closed unread when the object is larger.
    - ``list`` is ListObjectsV2 with ``Delimiter="/"`` and ``StartAfter``, page by page.

    Configuration is boto's: ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), ``AWS_*``
    credentials and profiles, ``FSSPEC_S3_*``, or s3fs storage options such as
    ``endpoint_url``, ``key``/``secret``, ``profile``, ``anon`` and ``client_kwargs``.
    botocore's and s3fs's own retries are as they configure them (``AWS_MAX_ATTEMPTS``).
    """

    capabilities: ClassVar[Capabilities] = Capabilities(shared=True, linger=0.25, poll=0.05)
    credentials_hint: ClassVar[str] = (
        "Check the AWS credentials this process uses (AWS_PROFILE, AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or its role) and that they may read and write this location."
    )
    #: Attempts at one conditional PUT while S3 answers 409 ConditionalRequestConflict.
    conflict_attempts: ClassVar[int] = 5

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        options = {"use_listings_cache": False, "skip_instance_cache": True, **storage_options}
        with self._opening():
            self.fs, _ = fsspec.url_to_fs(url, **options)
        self._closed = False

    def _put(self, name: str, data: bytes) -> bool:
        self.fs.pipe_file(f"{self.bucket}/{name}", data, mode="create")
        return True

    def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        result: tuple[int, bytes | None] = sync(self.fs.loop, self._get_object, name, max_size)
        return result

    async def _get_object(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if max_size is not None:
            request["Range"] = f"bytes=0-{max_size}"
        try:
            response = await self.fs._call_s3("get_object", **request)
        except Exception as exc:
            code, status = error_code(exc)
            if max_size is not None and (status == 416 or code == "InvalidRange"):
                return 0, b""  # no byte 0: the object is empty
            raise
        body = response["Body"]
        try:
            size = _total_size(response)
            if max_size is not None and size is not None and size > max_size:
                return size, None  # closed below, unread
            data = bytes(await body.read())
        finally:
            body.close()
        return len(data), data

    def _list(
        self, base: str, start_after: str | None, token: str | None
    ) -> tuple[Iterable[str], str | None]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
        if start_after is not None:
            request["StartAfter"] = start_after
        if token:
            request["ContinuationToken"] = token
        if self.page_size is not None:
            request["MaxKeys"] = self.page_size
        page = self.fs.call_s3("list_objects_v2", **request)
        names = [item["Key"] for item in page.get("Contents", ())]
        names += [folder["Prefix"] for folder in page.get("CommonPrefixes", ())]
        return names, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    def _delete(self, name: str) -> None:
        self.fs.call_s3("delete_object", Bucket=self.bucket, Key=name)

    def _walk(self, base: str, token: str | None) -> tuple[Iterable[tuple[str, int]], str | None]:
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base}
        if token:
            request["ContinuationToken"] = token
        if self.page_size is not None:
            request["MaxKeys"] = self.page_size
        page = self.fs.call_s3("list_objects_v2", **request)
        found = [(item["Key"], int(item.get("Size", -1))) for item in page.get("Contents", ())]
        return found, page.get("NextContinuationToken") if page.get("IsTruncated") else None

    def _classify(self, exc: BaseException) -> str:
        return classify(exc)

    def _detail(self, exc: BaseException) -> str:
        return detail(exc)

    def close(self) -> None:
        """Close this transport's S3 client and its connections."""
        if self._closed:
            return
        self._closed = True
        creator = getattr(self.fs, "_s3creator", None)
        if creator is not None and getattr(self.fs, "_s3", None) is not None:
            # Best effort, as s3fs's own finalizer.
            with contextlib.suppress(Exception):
                type(self.fs).close_session(self.fs.loop, creator)
            self.fs._s3 = None


def _total_size(response: dict[str, Any]) -> int | None:
    """The object's size: from ``ContentRange: bytes 0-N/TOTAL`` on a ranged read."""
    content_range = response.get("ContentRange")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    size = response.get("ContentLength")
    return int(size) if size is not None else None
