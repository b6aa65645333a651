"""``s3://`` and ``s3a://``: a bus in an S3 bucket, through s3fs."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import fsspec
from fsspec.asyn import sync

from pipes_bus import ConfigurationError, ObjectTooLargeError, StoreError
from pipes_bus.transports import Capabilities, Transport

from ._errors import classify, translate

__all__ = ["S3Transport"]


class S3Transport(Transport):
    """Objects in an S3 bucket (AWS, or any S3-compatible server).

    - Exclusive create is a conditional PUT (``If-None-Match: *``, one request). A 409
      ``ConditionalRequestConflict`` (a concurrent conditional write in flight) is
      retried here a few times, then raised as ``TransientStoreError``.
    - ``get`` is one GET, never a HEAD or a listing first, so a key that appears after
      a miss is seen at once; over ``max_size`` the body is closed unread.
    - ``list`` is ListObjectsV2 with ``Delimiter="/"`` and ``StartAfter``, page by page.

    Configuration is boto's: ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), ``AWS_*``
    credentials and profiles, ``FSSPEC_S3_*``, or s3fs storage options such as
    ``endpoint_url``, ``key``/``secret``, ``profile``, ``anon`` and ``client_kwargs``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("s3", "s3a")
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_create=True, list_after=True, shared=True, linger=0.25, poll=0.05
    )
    #: Attempts at one conditional PUT while S3 answers 409 ConditionalRequestConflict.
    conflict_attempts: ClassVar[int] = 5

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        options = {"use_listings_cache": False, "skip_instance_cache": True, **storage_options}
        try:
            self.fs, root = fsspec.url_to_fs(url, **options)
        except ImportError:
            raise
        except Exception as exc:
            raise ConfigurationError(f"Cannot open {url}: {type(exc).__name__}: {exc}") from exc
        bucket, _, prefix = root.strip("/").partition("/")
        if not bucket:
            raise ConfigurationError(f"{url!r} names no bucket; write s3://BUCKET/PREFIX.")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        #: How conflict retries wait; replaceable in tests.
        self.sleep: Callable[[float], None] = time.sleep
        self._closed = False

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = f"{self.bucket}/{self._key(key)}"
        attempt = 0
        while True:
            attempt += 1
            self.stats.count("put", sent=len(data))
            try:
                self.fs.pipe_file(path, data, mode="create")
            except Exception as exc:
                verdict = classify(exc)
                if verdict == "exists":
                    return False
                if verdict == "conflict" and attempt < self.conflict_attempts:
                    # Another conditional write to this key is in flight; its outcome
                    # decides ours, usually within milliseconds.
                    self.sleep(random.uniform(0.5, 1.0) * 0.025 * 2**attempt)
                    continue
                raise self._error(exc, key, "write") from exc
            return True

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

    async def _get(self, s3_key: str, max_size: int | None) -> tuple[int, bytes | None]:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=s3_key)
        body = response["Body"]
        try:
            size = response.get("ContentLength")
            if max_size is not None and size is not None and size > max_size:
                return size, None  # closed below, unread
            data = bytes(await body.read())
        finally:
            body.close()
        if max_size is not None and len(data) > max_size:
            return len(data), None
        return len(data), data

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        base = self._key(prefix)
        base = f"{base}/" if base else ""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
        if after is not None:
            request["StartAfter"] = base + after
        names: set[str] = set()
        while True:
            self.stats.count("list")
            try:
                page = self.fs.call_s3("list_objects_v2", **request)
            except Exception as exc:
                raise self._error(exc, prefix, "list") from exc
            for item in page.get("Contents", ()):
                names.add(item["Key"][len(base) :])
            for folder in page.get("CommonPrefixes", ()):
                names.add(folder["Prefix"][len(base) :].rstrip("/"))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            request["ContinuationToken"] = token
        names.discard("")
        return sorted(n for n in names if "/" not in n and (after is None or n > after))

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if classify(exc) == "missing_key":
                return
            raise self._error(exc, key, "delete") from exc

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

    def _error(self, exc: BaseException, key: str | None, op: str) -> StoreError:
        return translate(exc, url=self.url, bucket=self.bucket, key=key or None, op=op)
