"""The GCS transport (pipes-bus-gcs) against fake-gcs-server, over real HTTP."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import aiohttp
import fsspec.config
import pytest
import requests.exceptions
from gcsfs.retry import HttpError
from google.auth.exceptions import DefaultCredentialsError, RefreshError
from pipes_bus_gcs import GCSTransport, classify

from pipes_bus import ObjectTooLargeError, PermanentStoreError, TransientStoreError
from pipes_bus.testing import FaultProxy, Reply
from pipes_bus.testing.conformance import BucketConformance
from pipes_bus.testing.servers import Server
from pipes_bus.transports import ENTRY_POINT_GROUP, open_transport

# gcsfs hands aiohttp an upload body as bytes, and aiohttp warns about bodies over 1 MiB
# (a ResourceWarning, silent outside tests). Objects that large are not chunks; the
# conformance suite's 6 MiB round trip makes one.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sending a large body directly with raw bytes:ResourceWarning"
)


@pytest.fixture
def proxy(gcs_server: Server) -> Iterator[FaultProxy]:
    """A recording proxy in front of fake-gcs-server."""
    with FaultProxy(gcs_server.url) as recording:
        yield recording


@pytest.fixture
def proxied(gcs_url: str, proxy: FaultProxy) -> Iterator[GCSTransport]:
    """A GCS transport that reaches the emulator through the recording proxy."""
    transport = GCSTransport(gcs_url, endpoint_url=proxy.url)
    yield transport
    transport.close()


class TestGCSConformance(BucketConformance):
    """The shipped conformance suite: the transport through open_transport and the
    environment alone, and the bucket-store cases against fake-gcs-server behind a proxy."""

    # A 404 is the same for a missing object and a missing bucket: the first costs a probe.
    probe_requests = 1
    busy_reply: Reply = (  # as GCS answers
        503,
        {"Content-Type": "application/json"},
        b'{"error": {"code": 503, "message": "Service Unavailable"}}',
    )

    @pytest.fixture
    def transport(self, gcs_url: str) -> Iterator[GCSTransport]:
        transport = open_transport(gcs_url)
        assert isinstance(transport, GCSTransport)
        yield transport
        transport.close()

    @pytest.fixture
    def endpoint(self, gcs_server: Server) -> str:
        return gcs_server.url

    @pytest.fixture
    def transport_at(self, gcs_url: str) -> Callable[[str], GCSTransport]:
        return lambda endpoint: GCSTransport(gcs_url, endpoint_url=endpoint)

    @pytest.fixture
    def missing_bucket_transport(self, gcs_env: object) -> Iterator[GCSTransport]:
        transport = GCSTransport(f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/bus")
        yield transport
        transport.close()


class TestRegistration:
    def test_the_plugin_is_registered_for_gs_and_gcs(self) -> None:
        """The installed distribution declares gs and gcs in the transports entry-point group."""
        names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        assert names["gs"] == names["gcs"] == "pipes_bus_gcs:GCSTransport"

    @pytest.mark.parametrize("scheme", ["gs", "gcs"])
    def test_open_transport_picks_the_plugin_without_a_hint(
        self, gcs_url: str, scheme: str
    ) -> None:
        """open_transport serves gs:// and gcs:// with GCSTransport, warning about nothing."""
        url = gcs_url.replace("gs://", f"{scheme}://", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            transport = open_transport(url)
        try:
            assert type(transport) is GCSTransport
            assert transport.put_if_absent("k", b"v") is True
            assert transport.get("k") == b"v"
        finally:
            transport.close()

    def test_a_fresh_process_needs_only_storage_emulator_host(
        self, gcs_url: str, gcs_env: dict[str, str]
    ) -> None:
        """A new interpreter with only STORAGE_EMULATOR_HOST set reaches the same objects.

        No token (anonymous is the emulator default) and no GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
        (the plugin sets it before gcsfs is imported; without it gcsfs would hang).
        """
        with open_transport(gcs_url) as transport:
            assert transport.put_if_absent("from-parent", b"hello")
        script = textwrap.dedent(
            f"""
            import pipes_bus.transports
            t = pipes_bus.transports.open_transport({gcs_url!r})
            assert type(t).__name__ == "GCSTransport", type(t)
            assert t.get("from-parent") == b"hello"
            assert t.put_if_absent("from-child", b"hi")
            t.close()
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GCSFS_", "GOOGLE_"))}
        env["STORAGE_EMULATOR_HOST"] = gcs_env["STORAGE_EMULATOR_HOST"]
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
        with open_transport(gcs_url) as transport:
            assert transport.get("from-child") == b"hi"

    def test_fsspec_settings_configure_the_filesystem(
        self, gcs_url: str, gcs_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FSSPEC_GS_* settings (fsspec's config) reach gcsfs: endpoint and token here."""
        monkeypatch.delenv("STORAGE_EMULATOR_HOST")
        monkeypatch.setitem(
            fsspec.config.conf, "gs", {"endpoint_url": gcs_server.url, "token": "anon"}
        )
        with GCSTransport(gcs_url) as transport:
            assert transport.put_if_absent("k", b"v") is True
            assert transport.get("k") == b"v"


class TestExclusiveCreate:
    @pytest.mark.parametrize("size", [4, 6 * 2**20])
    def test_a_put_is_one_simple_upload_with_a_generation_precondition(
        self, proxied: GCSTransport, proxy: FaultProxy, size: int
    ) -> None:
        """put_if_absent is one multipart (not resumable) POST with ifGenerationMatch=0,
        on a taken name too (412)."""
        assert proxied.put_if_absent("chunk", b"d" * size) is True
        assert proxied.put_if_absent("chunk", b"second") is False
        assert proxy.methods() == ["POST", "POST"]
        for request in proxy.requests:
            assert "uploadType=multipart" in request.path
            assert "ifGenerationMatch=0" in request.path
        assert proxied.stats.snapshot()["requests"] == {"put": 2}
        assert proxied.stats.bytes_sent == size + len(b"second")


class TestFreshReads:
    def test_the_first_miss_checks_the_bucket_once(
        self, proxied: GCSTransport, proxy: FaultProxy
    ) -> None:
        """A fresh transport's first 404 costs one extra listing; later misses do not."""
        assert proxied.get("nothing/0") is None
        assert proxied.get("nothing/1") is None
        assert proxy.methods() == ["GET", "GET", "GET"]
        assert "/download/" in proxy.requests[0].path
        assert "maxResults=1" in proxy.requests[1].path
        assert proxied.stats.snapshot()["requests"] == {"get": 2, "list": 1}

    def test_a_limited_read_is_a_ranged_get(self, proxied: GCSTransport, proxy: FaultProxy) -> None:
        """get(max_size=n) is one GET of bytes 0..n."""
        assert proxied.put_if_absent("big", b"x" * 2000)
        proxy.clear()
        with pytest.raises(ObjectTooLargeError):
            proxied.get("big", max_size=1000)
        assert proxy.methods() == ["GET"]
        assert proxy.requests[0].headers["range"] == "bytes=0-1000"


class TestListAfter:
    def test_list_after_uses_start_offset(self, proxied: GCSTransport, proxy: FaultProxy) -> None:
        """list(after=k) sends startOffset and returns only names after k, folders included."""
        for n in range(6):
            assert proxied.put_if_absent(f"s/{n:020d}", b"1")
        assert proxied.put_if_absent("s/zz/inner", b"1")
        proxy.clear()
        assert proxied.list("s", after=f"{3:020d}") == [f"{4:020d}", f"{5:020d}", "zz"]
        assert proxy.methods() == ["GET"]
        assert f"startOffset={proxied.prefix}/s/{3:020d}" in proxy.requests[0].path


def _http(code: int, message: str = "") -> HttpError:
    return HttpError({"code": code, "message": message})


class TestClassifier:
    @pytest.mark.parametrize(
        ("error", "verdict"),
        [
            (FileExistsError("b/o"), "exists"),
            (_http(412), "exists"),
            (FileNotFoundError("b/o"), "missing"),
            (_http(429, "rateLimitExceeded"), "transient"),
            (_http(503, "backendError"), "transient"),
            (_http(500), "transient"),
            (_http(408), "transient"),
            (_http(409, "conflict"), "transient"),
            (requests.exceptions.ProxyError(), "transient"),  # what gcsfs raises for 502
            (aiohttp.ServerDisconnectedError(), "transient"),
            (aiohttp.ClientOSError(errno.ECONNRESET, "reset"), "transient"),
            (asyncio.TimeoutError(), "transient"),
            (OSError(errno.EBUSY, "busy"), "transient"),
            (RefreshError("temporary failure"), "transient"),
            (OSError("Forbidden: b/o\nno permission"), "denied"),
            (_http(401, "Invalid Credentials"), "denied"),
            (_http(403), "denied"),
            (DefaultCredentialsError("Could not automatically determine credentials"), "denied"),
            (RefreshError("invalid_grant: account not found"), "denied"),
            (ValueError("Bad Request: b\ninvalid bucket name"), "permanent"),
            (_http(400, "bad"), "permanent"),
        ],
    )
    def test_classifies_gcs_failures(self, error: BaseException, verdict: str) -> None:
        """Each failure gcsfs raises gets the verdict the transport acts on."""
        assert classify(error) == verdict

    def test_transient_failures_become_transient_store_errors(self) -> None:
        """A 503 is TransientStoreError naming the URL."""
        with GCSTransport("gs://b/p", token="anon") as transport:
            error = transport._error(_http(503, "backendError"), "k", "read")
        assert isinstance(error, TransientStoreError)
        assert "gs://b/p/k" in str(error)

    def test_denied_is_permanent_and_says_what_to_check(self) -> None:
        """Refused credentials are PermanentStoreError pointing at the Google settings."""
        with GCSTransport("gs://b/p", token="anon") as transport:
            error = transport._error(OSError("Forbidden: b/o"), None, "list")
        assert isinstance(error, PermanentStoreError)
        assert "gs://b/p" in str(error) and "GOOGLE_APPLICATION_CREDENTIALS" in str(error)
