"""``gs://`` and ``gcs://``: a bus in a Google Cloud Storage bucket, through gcsfs."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterable
from typing import Any, ClassVar

import fsspec
import fsspec.config
from fsspec.asyn import sync

from pipes_bus.transports import BucketTransport, Capabilities

from ._errors import classify, status_of

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


class GCSTransport(BucketTransport):
    """Objects in a Google Cloud Storage bucket.

    - Exclusive create is a simple upload with ``ifGenerationMatch=0`` (one request),
      never a resumable upload, which some emulators do not make conditional.
    - ``get`` is one GET (a ranged GET of ``max_size + 1`` bytes when a limit is given).
    - ``list`` uses ``delimiter="/"`` and ``startOffset``, page by page.
    - GCS answers 404 alike for a missing object and a missing bucket; the first 404
      costs one extra listing request to tell them apart, and once the bucket is known
      to exist a miss is one GET.
    - Each request is one attempt: pipes_bus's retry policy, not gcsfs's, retries.

    Configuration is gcsfs's: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's default login
    or the machine's service account; ``STORAGE_EMULATOR_HOST`` for an emulator (then
    ``token="anon"`` is the default, as in Google's own client); ``FSSPEC_GS_*``; or
    storage options such as ``project``, ``token`` and ``endpoint_url``.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(shared=True, linger=0.25, poll=0.1)
    credentials_hint: ClassVar[str] = (
        "Check the Google credentials this process uses (GOOGLE_APPLICATION_CREDENTIALS, "
        "gcloud's application-default login, or the machine's service account; "
        "token='anon' for an emulator) and that they may read and write this location."
    )

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
        with self._opening():
            self.fs = cls(**{**cls._get_kwargs_from_urls(url), **options})
        _single_attempt(self.fs)
        self._closed = False

    def _put(self, name: str, data: bytes) -> bool:
        options = {"chunksize": len(data) + 1} if len(data) < _SIMPLE_UPLOAD_LIMIT else {}
        self.fs.pipe_file(f"{self.bucket}/{name}", data, mode="create", **options)
        return True

    def _get(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
        result: tuple[int, bytes | None] = sync(self.fs.loop, self._download, name, max_size)
        return result

    async def _download(self, name: str, max_size: int | None) -> tuple[int, bytes | None]:
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

    def _list(
        self, base: str, start_after: str | None, token: str | None
    ) -> tuple[Iterable[str], str | None]:
        params: dict[str, Any] = {
            "prefix": base,
            "delimiter": "/",
            "maxResults": self.page_size or 1000,
            "fields": "items(name),prefixes,nextPageToken",
        }
        if start_after is not None:
            params["startOffset"] = start_after  # inclusive; the base drops `after` itself
        if token:
            params["pageToken"] = token
        page = self.fs.call("GET", "b/{}/o", self.bucket, json_out=True, **params)
        names = [item["name"] for item in page.get("items", ())]
        return [*names, *page.get("prefixes", ())], page.get("nextPageToken")

    def _delete(self, name: str) -> None:
        self.fs.call("DELETE", "b/{}/o/{}", self.bucket, name)

    def _walk(self, base: str, token: str | None) -> tuple[Iterable[tuple[str, int]], str | None]:
        params: dict[str, Any] = {
            "prefix": base,
            "maxResults": self.page_size or 1000,
            "fields": "items(name,size),nextPageToken",
        }
        if token:
            params["pageToken"] = token
        page = self.fs.call("GET", "b/{}/o", self.bucket, json_out=True, **params)
        found = [(item["name"], int(item.get("size", -1))) for item in page.get("items", ())]
        return found, page.get("nextPageToken")

    def _probe_bucket(self, name: str) -> None:
        self.fs.call(
            "GET",
            "b/{}/o",
            self.bucket,
            json_out=True,
            prefix=name,
            maxResults=1,
            fields="nextPageToken",
        )

    def _classify(self, exc: BaseException) -> str:
        return classify(exc)

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


def _total_size(headers: Any, received: int) -> int:
    """The object's size from a ranged response's ``Content-Range: bytes 0-N/TOTAL``."""
    value = headers.get("Content-Range") if headers is not None else None
    if value and "/" in value:
        total = value.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    return received
