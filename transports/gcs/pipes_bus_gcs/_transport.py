"""``gs://`` and ``gcs://``: a bus in a Google Cloud Storage bucket, through gcsfs."""

from __future__ import annotations

import contextlib
import os
import types
from typing import Any, ClassVar

import fsspec
import fsspec.config
from fsspec.asyn import sync

from pipes_bus import ConfigurationError, ObjectTooLargeError, StoreError
from pipes_bus.transports import Capabilities, Transport

from ._errors import classify, missing_bucket, status_of, translate

__all__ = ["GCSTransport"]

# gcsfs switches to a simple (single request) upload below this size; a simple upload
# honours ifGenerationMatch=0 everywhere, fake-gcs-server included. Its limit is 5 GiB.
_SIMPLE_UPLOAD_LIMIT = 5 * 2**30
_TRUE = ("1", "true", "yes", "on")


def _filesystem_class() -> type[Any]:
    """gcsfs's plain filesystem, unless the user opted in to its experimental one."""
    if os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "").lower() in _TRUE:
        return fsspec.get_filesystem_class("gs")  # type: ignore[no-any-return]
    # The plain class even when gcsfs was imported (by someone else) before the
    # variable was set: the experimental one probes buckets over gRPC and hangs on
    # emulators.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem  # type: ignore[no-any-return]


def _single_attempt(fs: Any) -> None:
    """Make each of this filesystem's HTTP requests one attempt.

    gcsfs retries a failed request up to six times with waits of 1, 2, 4, 8 and 16 s inside
    one call, so a single blip could stall a writer or a reader half a minute before
    pipes_bus's own retry policy (bounded, jittered, configurable) saw it. The request
    method without gcsfs's retry decorator is bound to this one instance.
    """
    request = type(fs)._request
    fs._request = types.MethodType(getattr(request, "__wrapped__", request), fs)


def _emulated() -> bool:
    return os.environ.get("STORAGE_EMULATOR_HOST", "") not in ("", "default")


def _configured(option: str) -> bool:
    """Whether fsspec's own configuration (``FSSPEC_GS_*``, config files) sets ``option``."""
    return any(option in fsspec.config.conf.get(proto, {}) for proto in ("gs", "gcs"))


class GCSTransport(Transport):
    """Objects in a Google Cloud Storage bucket.

    - Exclusive create is a simple upload with ``ifGenerationMatch=0`` (one request),
      never a resumable upload, which some emulators do not make conditional.
    - ``get`` is one GET (a ranged GET of ``max_size + 1`` bytes when a limit is given).
    - ``list`` uses ``delimiter="/"`` and ``startOffset``, page by page.
    - GCS answers 404 alike for a missing object and a missing bucket; the first 404
      costs one extra listing request to tell them apart, and once the bucket is known
      to exist a miss is one GET.

    Configuration is gcsfs's: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's default login
    or the machine's service account; ``STORAGE_EMULATOR_HOST`` for an emulator (then
    ``token="anon"`` is the default, as in Google's own client); ``FSSPEC_GS_*``; or
    storage options such as ``project``, ``token`` and ``endpoint_url``.
    """

    schemes: ClassVar[tuple[str, ...]] = ("gs", "gcs")
    capabilities: ClassVar[Capabilities] = Capabilities(
        atomic_create=True, list_after=True, shared=True, linger=0.25, poll=0.1
    )
    #: Objects per listing page (GCS allows up to 1000).
    page_size: ClassVar[int] = 1000

    def __init__(self, url: str, **storage_options: Any) -> None:
        super().__init__(url, **storage_options)
        options: dict[str, Any] = {
            "use_listings_cache": False,
            "skip_instance_cache": True,
            **storage_options,
        }
        if _emulated() and "token" not in options and not _configured("token"):
            options["token"] = "anon"
        cls = _filesystem_class()
        try:
            self.fs = cls(**{**cls._get_kwargs_from_urls(url), **options})
            root = cls._strip_protocol(url)
        except ImportError:
            raise
        except Exception as exc:
            raise ConfigurationError(f"Cannot open {url}: {type(exc).__name__}: {exc}") from exc
        _single_attempt(self.fs)
        bucket, _, prefix = str(root).strip("/").partition("/")
        if not bucket:
            raise ConfigurationError(f"{url!r} names no bucket; write gs://BUCKET/PREFIX.")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._bucket_exists = False
        self._closed = False

    def _key(self, key: str) -> str:
        key = key.strip("/")
        if not self.prefix:
            return key
        return f"{self.prefix}/{key}" if key else self.prefix

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.stats.count("put", sent=len(data))
        options = {"chunksize": len(data) + 1} if len(data) < _SIMPLE_UPLOAD_LIMIT else {}
        try:
            self.fs.pipe_file(f"{self.bucket}/{self._key(key)}", data, mode="create", **options)
        except Exception as exc:
            verdict = classify(exc)
            if verdict == "exists":
                self._bucket_exists = True
                return False
            if verdict == "missing":  # an upload 404s only for a missing bucket
                raise missing_bucket(url=self.url, bucket=self.bucket, key=key, op="write") from exc
            raise self._error(exc, key, "write") from exc
        self._bucket_exists = True
        return True

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        try:
            result: tuple[int, bytes | None] = sync(
                self.fs.loop, self._get, self._key(key), max_size
            )
            size, data = result
        except Exception as exc:
            self.stats.count("get")
            if classify(exc) == "missing":
                self._check_bucket(key, "read", exc)
                return None
            raise self._error(exc, key, "read") from exc
        self.stats.count("get", received=len(data) if data is not None else 0)
        self._bucket_exists = True
        if data is None:  # only ever with a max_size: the object is over it
            raise ObjectTooLargeError.over_limit(self.url, key, size, max_size or 0)
        return data

    async def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        url = self.fs.url(f"{self.bucket}/{name}")
        if max_size is None:
            _, data = await self.fs._call("GET", url)
            return len(data), bytes(data)
        try:
            headers, data = await self.fs._call(
                "GET", url, headers={"Range": f"bytes=0-{max_size}"}
            )
        except Exception as exc:
            if status_of(exc) == 416:  # no byte 0: the object is empty
                return 0, b""
            raise
        size = _total_size(headers, len(data))
        if size > max_size or len(data) > max_size:
            return max(size, len(data)), None
        return len(data), bytes(data)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        base = self._key(prefix)
        base = f"{base}/" if base else ""
        params: dict[str, Any] = {
            "prefix": base,
            "delimiter": "/",
            "maxResults": self.page_size,
            "fields": "items(name),prefixes,nextPageToken",
        }
        if after is not None:
            params["startOffset"] = base + after  # inclusive; `after` itself is dropped below
        names: set[str] = set()
        while True:
            self.stats.count("list")
            try:
                page = self.fs.call("GET", "b/{}/o", self.bucket, json_out=True, **params)
            except Exception as exc:
                if classify(exc) == "missing":  # listing 404s only for a missing bucket
                    raise missing_bucket(
                        url=self.url, bucket=self.bucket, key=prefix, op="list"
                    ) from exc
                raise self._error(exc, prefix, "list") from exc
            self._bucket_exists = True
            for item in page.get("items", ()):
                names.add(item["name"][len(base) :])
            for folder in page.get("prefixes", ()):
                names.add(folder[len(base) :].rstrip("/"))
            token = page.get("nextPageToken")
            if not token:
                break
            params["pageToken"] = token
        names.discard("")
        return sorted(n for n in names if "/" not in n and (after is None or n > after))

    def delete(self, key: str) -> None:
        self.stats.count("delete")
        try:
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._key(key))
        except Exception as exc:
            if classify(exc) == "missing":
                self._check_bucket(key, "delete", exc)
                return
            raise self._error(exc, key, "delete") from exc

    def _check_bucket(self, key: str, op: str, cause: BaseException) -> None:
        """After a 404, raise if it was the bucket that is missing; check only once."""
        if self._bucket_exists:
            return
        self.stats.count("list")
        try:
            self.fs.call(
                "GET",
                "b/{}/o",
                self.bucket,
                json_out=True,
                prefix=self._key(key),
                maxResults=1,
                fields="nextPageToken",
            )
        except Exception as exc:
            if classify(exc) == "missing":
                raise missing_bucket(url=self.url, bucket=self.bucket, key=key, op=op) from cause
            return  # cannot tell (e.g. no list permission): take the 404 as "no object"
        self._bucket_exists = True

    def close(self) -> None:
        """Close this transport's HTTP session."""
        if self._closed:
            return
        self._closed = True
        session = getattr(self.fs, "_session", None)
        if session is not None and not session.closed:
            # Best effort, as gcsfs's own finalizer.
            with contextlib.suppress(Exception):
                sync(self.fs.loop, session.close, timeout=5)

    def _error(self, exc: BaseException, key: str | None, op: str) -> StoreError:
        return translate(exc, url=self.url, bucket=self.bucket, key=key or None, op=op)


def _total_size(headers: Any, received: int) -> int:
    """The object's size from a ranged response's ``Content-Range: bytes 0-N/TOTAL``."""
    value = headers.get("Content-Range") if headers is not None else None
    if value and "/" in value:
        total = value.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    return received
