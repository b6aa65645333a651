"""The Azure Blob transport (pipes-bus-azure) against Azurite, over real HTTP."""

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
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from pipes_bus_azure import AzureBlobTransport, classify
from pipes_bus_azure._transport import _cli_account, _start_from_refused

from pipes_bus import ObjectTooLargeError, TransientStoreError
from pipes_bus.testing import FaultProxy, Recorded, Reply
from pipes_bus.testing.conformance import BucketConformance, CredentialsConformance
from pipes_bus.testing.servers import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    Server,
    azurite_connection_string,
)
from pipes_bus.transports import ENTRY_POINT_GROUP, open_transport

# The Azure SDK hands aiohttp a Put Blob body as bytes, and aiohttp warns about bodies over
# 1 MiB (a ResourceWarning, silent outside tests). Objects that large are not chunks; the
# conformance suite's 6 MiB round trip makes one.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Sending a large body directly with raw bytes:ResourceWarning"
)


def connection_string_at(endpoint: str) -> str:
    """Azurite's connection string, with the blob endpoint at ``endpoint`` (a proxy)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
        f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


@pytest.fixture
def proxy(azurite_server: Server) -> Iterator[FaultProxy]:
    """A recording proxy in front of Azurite."""
    with FaultProxy(azurite_server.url) as recording:
        yield recording


@pytest.fixture
def proxied(azure_url: str, proxy: FaultProxy) -> Iterator[AzureBlobTransport]:
    """An Azure transport that reaches Azurite through the recording proxy."""
    transport = AzureBlobTransport(azure_url, connection_string=connection_string_at(proxy.url))
    yield transport
    transport.close()


class TestAzureConformance(BucketConformance, CredentialsConformance):
    """The shipped conformance suite: the transport through open_transport and the
    environment alone, and the bucket-store cases against Azurite behind a proxy."""

    busy_reply: Reply = (  # as Azure Blob Storage answers
        503,
        {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"},
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
        b"<Message>The server is busy.</Message></Error>",
    )
    denied_detail = "AuthorizationFailure"

    @pytest.fixture
    def transport(self, azure_url: str) -> Iterator[AzureBlobTransport]:
        transport = open_transport(azure_url)
        assert isinstance(transport, AzureBlobTransport)
        yield transport
        transport.close()

    @pytest.fixture
    def endpoint(self, azurite_server: Server) -> str:
        return azurite_server.url

    @pytest.fixture
    def transport_at(self, azure_url: str) -> Callable[[str], AzureBlobTransport]:
        return lambda endpoint: AzureBlobTransport(
            azure_url, connection_string=connection_string_at(endpoint)
        )

    @pytest.fixture
    def missing_bucket_transport(self, azure_env: object) -> Iterator[AzureBlobTransport]:
        transport = AzureBlobTransport(f"az://no-such-container-{uuid.uuid4().hex[:8]}/bus")
        yield transport
        transport.close()

    @pytest.fixture
    def wrong_credentials_transport(
        self, azure_url: str, azurite_server: Server
    ) -> Iterator[tuple[AzureBlobTransport, list[str]]]:
        """Azurite refuses a wrong key (403 AuthorizationFailure)."""
        wrong = "A" * 86 + "=="
        connection = azurite_connection_string(azurite_server).replace(AZURITE_KEY, wrong)
        transport = AzureBlobTransport(azure_url, connection_string=connection)
        yield transport, [AZURITE_KEY, wrong[:4]]
        transport.close()


class TestRegistration:
    def test_the_plugin_is_registered_for_az_abfs_and_abfss(self) -> None:
        """The installed distribution declares az, abfs and abfss in the entry-point group."""
        names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        assert names["az"] == names["abfs"] == names["abfss"]
        assert names["az"] == "pipes_bus_azure:AzureBlobTransport"

    @pytest.mark.parametrize(
        "template",
        [
            "az://{container}/{prefix}",
            "abfs://{container}/{prefix}",
            "abfss://{container}@" + AZURITE_ACCOUNT + ".dfs.core.windows.net/{prefix}",
        ],
    )
    def test_open_transport_picks_the_plugin_without_a_hint(
        self, azure_url: str, template: str
    ) -> None:
        """Every Azure URL form opens AzureBlobTransport on the same container and prefix."""
        container, prefix = azure_url.removeprefix("az://").split("/", 1)
        url = template.format(container=container, prefix=prefix)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            transport = open_transport(url)
        try:
            assert type(transport) is AzureBlobTransport
            assert (transport.container, transport.prefix) == (container, prefix)
            transport.put_if_absent("k", b"v")
            assert transport.get("k") == b"v"
        finally:
            transport.close()

    def test_a_fresh_process_needs_only_the_connection_string(
        self, azure_url: str, azure_env: dict[str, str]
    ) -> None:
        """A new interpreter with AZURE_STORAGE_CONNECTION_STRING set reaches the same blobs."""
        with open_transport(azure_url) as transport:
            assert transport.put_if_absent("from-parent", b"hello")
        script = textwrap.dedent(
            f"""
            import pipes_bus.transports
            t = pipes_bus.transports.open_transport({azure_url!r})
            assert type(t).__name__ == "AzureBlobTransport", type(t)
            assert t.get("from-parent") == b"hello"
            assert t.put_if_absent("from-child", b"hi")
            t.close()
            """
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        env.update(azure_env)
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
        with open_transport(azure_url) as transport:
            assert transport.get("from-child") == b"hi"

    def test_fsspec_settings_configure_the_filesystem(
        self, azure_url: str, azurite_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FSSPEC_AZ_* settings (fsspec's config) reach adlfs: the connection string here."""
        monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
        monkeypatch.setitem(
            fsspec.config.conf,
            "az",
            {"connection_string": azurite_connection_string(azurite_server)},
        )
        with AzureBlobTransport(azure_url) as transport:
            assert transport.put_if_absent("k", b"v") is True
            assert transport.get("k") == b"v"

    def test_the_azure_cli_account_variables_are_a_fallback(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """AZURE_STORAGE_ACCOUNT/AZURE_STORAGE_KEY are used only when nothing else is set."""
        for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_KEY", raising=False)
        monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "acct")
        monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")
        assert _cli_account({}) == {"account_name": "acct", "account_key": "a2V5"}
        assert _cli_account({"account_name": "other"}) == {}
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=x")
        assert _cli_account({}) == {}


class TestExclusiveCreate:
    def test_a_put_is_one_conditional_put(
        self, proxied: AzureBlobTransport, proxy: FaultProxy
    ) -> None:
        """put_if_absent sends one Put Blob with If-None-Match: *; on a taken name too
        (BlobAlreadyExists)."""
        assert proxied.put_if_absent("chunk", b"data") is True
        assert proxied.put_if_absent("chunk", b"second") is False
        assert proxy.methods() == ["PUT", "PUT"]
        assert [r.headers.get("if-none-match") for r in proxy.requests] == ["*", "*"]


class TestFreshReads:
    def test_a_limited_read_is_a_ranged_get(
        self, proxied: AzureBlobTransport, proxy: FaultProxy
    ) -> None:
        """get(max_size=n) is one Get Blob of bytes 0..n."""
        assert proxied.put_if_absent("big", b"x" * 2000)
        proxy.clear()
        with pytest.raises(ObjectTooLargeError):
            proxied.get("big", max_size=1000)
        assert proxy.methods() == ["GET"]
        assert proxy.requests[0].headers["x-ms-range"] == "bytes=0-1000"


class TestListAfter:
    def test_list_after_sends_start_from_and_filters(
        self, proxied: AzureBlobTransport, proxy: FaultProxy
    ) -> None:
        """list(after=k) asks for startFrom=k (Azurite ignores it) and returns only later names."""
        for n in range(6):
            assert proxied.put_if_absent(f"s/{n:020d}", b"1")
        assert proxied.put_if_absent("s/zz/inner", b"1")
        proxy.clear()
        assert proxied.list("s", after=f"{3:020d}") == [f"{4:020d}", f"{5:020d}", "zz"]
        assert proxy.methods() == ["GET"]
        assert "startFrom=" in proxy.requests[0].path

    def test_a_refused_start_from_falls_back_to_filtering(
        self, azure_url: str, azurite_server: Server
    ) -> None:
        """A service that rejects startFrom gets the plain listing from then on, filtered here."""
        with FaultProxy(azurite_server.url, inject=_refuse_start_from) as proxy:
            transport = AzureBlobTransport(
                azure_url, connection_string=connection_string_at(proxy.url)
            )
            for n in range(4):
                assert transport.put_if_absent(f"s/{n}", b"1")
            proxy.clear()
            assert transport.list("s", after="1") == ["2", "3"]
            assert transport.list("s", after="2") == ["3"]
            transport.close()
        listings = [r.path for r in proxy.requests]
        assert len(listings) == 3
        assert "startFrom=" in listings[0]
        assert not any("startFrom=" in path for path in listings[1:])


class TestErrors:
    def test_no_account_configured_is_a_configuration_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without any account settings, opening the bus says which settings to provide."""
        from pipes_bus import ConfigurationError

        for name in list(os.environ):
            if name.startswith("AZURE_"):
                monkeypatch.delenv(name)
        with pytest.raises(ConfigurationError, match="AZURE_STORAGE_CONNECTION_STRING"):
            AzureBlobTransport("az://container/prefix")


def _response_error(status: int, code: str | None, cls: type = HttpResponseError) -> Exception:
    error = cls(message=f"{code or status} happened")
    error.status_code = status
    error.error_code = code
    return error


class TestClassifier:
    @pytest.mark.parametrize(
        ("error", "verdict"),
        [
            (_response_error(409, "BlobAlreadyExists", ResourceExistsError), "exists"),
            (_response_error(412, "ConditionNotMet"), "exists"),
            (_response_error(404, "BlobNotFound", ResourceNotFoundError), "missing_key"),
            (_response_error(404, "ContainerNotFound", ResourceNotFoundError), "missing_bucket"),
            (_response_error(503, "ServerBusy"), "transient"),
            (_response_error(500, "OperationTimedOut"), "transient"),
            (_response_error(500, "InternalError"), "transient"),
            (_response_error(429, None), "transient"),
            (_response_error(409, "ContainerBeingDeleted"), "missing_bucket"),
            (_response_error(409, "SomeOtherConflict"), "transient"),
            (ServiceRequestError("Cannot connect to host"), "transient"),
            (ServiceResponseError("Connection reset by peer"), "transient"),
            (aiohttp.ServerDisconnectedError(), "transient"),
            (asyncio.TimeoutError(), "transient"),
            (OSError(errno.EBUSY, "busy"), "transient"),
            (_response_error(403, "AuthorizationFailure"), "denied"),
            (_response_error(403, "AuthenticationFailed", ClientAuthenticationError), "denied"),
            (_response_error(403, "AuthorizationPermissionMismatch"), "denied"),
            (ClientAuthenticationError("DefaultAzureCredential failed"), "denied"),
            (_response_error(400, "InvalidHeaderValue"), "permanent"),
        ],
    )
    def test_classifies_azure_failures(self, error: BaseException, verdict: str) -> None:
        """Each Azure SDK failure gets the verdict the transport acts on."""
        assert classify(error) == verdict

    def test_transient_failures_become_transient_store_errors(self) -> None:
        """ServerBusy is TransientStoreError naming the URL."""
        unused = connection_string_at("http://127.0.0.1:9")
        with AzureBlobTransport("az://c/p", connection_string=unused) as transport:
            error = transport._error(_response_error(503, "ServerBusy"), "k", "read")
        assert isinstance(error, TransientStoreError)
        assert "az://c/p/k" in str(error)

    def test_start_from_refusals_are_recognised(self) -> None:
        """An SDK without start_from, or a 400 about it, turns the option off."""
        assert _start_from_refused(TypeError("unexpected keyword argument 'start_from'"))
        assert _start_from_refused(_response_error(400, "InvalidQueryParameterValue"))
        assert not _start_from_refused(_response_error(503, "ServerBusy"))


_INVALID_QUERY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InvalidQueryParameterValue</Code>'
    b"<Message>Value for one of the query parameters specified in the request URI is "
    b"invalid.</Message><QueryParameterName>startFrom</QueryParameterName></Error>"
)


def _refuse_start_from(request: Recorded) -> Reply | None:
    if "startFrom=" not in request.path:
        return None
    return (
        400,
        {"Content-Type": "application/xml", "x-ms-error-code": "InvalidQueryParameterValue"},
        _INVALID_QUERY,
    )
