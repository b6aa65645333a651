"""The S3 transport (pipes-bus-s3) against moto's S3 server, over real HTTP."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import uuid
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points

import botocore.exceptions
import fsspec.config
import pytest
from botocore.exceptions import ClientError
from pipes_bus_s3 import S3Transport, classify
from s3fs.errors import translate_boto_error

from pipes_bus import ObjectTooLargeError, PermanentStoreError, TransientStoreError
from pipes_bus.testing import FaultProxy, Recorded, Reply
from pipes_bus.testing.conformance import BucketConformance
from pipes_bus.testing.servers import Server
from pipes_bus.transports import ENTRY_POINT_GROUP, open_transport

_CONFLICT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting conditional operation is currently in progress against this "
    b"resource. Please try again.</Message></Error>"
)


def client_error(code: str, status: int, message: str = "", op: str = "PutObject") -> ClientError:
    """A botocore ClientError as S3 would produce it."""
    return ClientError(
        {
            "Error": {"Code": code, "Message": message or code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        op,
    )


def through_s3fs(error: ClientError) -> BaseException:
    """The same error after s3fs's own translation (what the transport actually sees)."""
    return translate_boto_error(error)


@pytest.fixture
def proxy(moto_server: Server) -> Iterator[FaultProxy]:
    """A recording proxy in front of moto."""
    with FaultProxy(moto_server.url) as recording:
        yield recording


@pytest.fixture
def proxied(s3_url: str, proxy: FaultProxy) -> Iterator[S3Transport]:
    """An S3 transport that reaches moto through the recording proxy."""
    transport = S3Transport(s3_url, endpoint_url=proxy.url)
    yield transport
    transport.close()


class TestS3Conformance(BucketConformance):
    """The shipped conformance suite: the transport through open_transport and the
    environment alone, and the bucket-store cases against moto behind a proxy."""

    @pytest.fixture
    def transport(self, s3_url: str) -> Iterator[S3Transport]:
        transport = open_transport(s3_url)
        assert isinstance(transport, S3Transport)
        yield transport
        transport.close()

    @pytest.fixture
    def endpoint(self, moto_server: Server) -> str:
        return moto_server.url

    @pytest.fixture
    def transport_at(self, s3_url: str) -> Callable[[str], S3Transport]:
        def at(endpoint: str) -> S3Transport:
            # botocore's and s3fs's retries are the user's to configure (AWS_MAX_ATTEMPTS):
            # off here, so that one failure is one request.
            transport = S3Transport(
                s3_url, endpoint_url=endpoint, config_kwargs={"retries": {"total_max_attempts": 1}}
            )
            transport.fs.retries = 1
            return transport

        return at

    @pytest.fixture
    def missing_bucket_transport(self, s3_env: object) -> Iterator[S3Transport]:
        transport = S3Transport(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/bus")
        yield transport
        transport.close()


class TestRegistration:
    def test_the_plugin_is_registered_for_s3_and_s3a(self) -> None:
        """The installed distribution declares s3 and s3a in the transports entry-point group."""
        names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        assert names["s3"] == names["s3a"] == "pipes_bus_s3:S3Transport"

    @pytest.mark.parametrize("scheme", ["s3", "s3a"])
    def test_open_transport_picks_the_plugin_without_a_hint(self, s3_url: str, scheme: str) -> None:
        """open_transport serves s3:// and s3a:// with S3Transport, warning about nothing."""
        url = s3_url.replace("s3://", f"{scheme}://", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            transport = open_transport(url)
        try:
            assert type(transport) is S3Transport
            assert transport.put_if_absent("k", b"v") is True
            assert transport.get("k") == b"v"
        finally:
            transport.close()

    def test_a_fresh_process_needs_only_its_environment(
        self, s3_url: str, s3_env: dict[str, str]
    ) -> None:
        """A new interpreter with AWS_ENDPOINT_URL_S3 and AWS_* set reaches the same objects."""
        with open_transport(s3_url) as transport:
            assert transport.put_if_absent("from-parent", b"hello")
        script = textwrap.dedent(
            f"""
            import pipes_bus.transports
            t = pipes_bus.transports.open_transport({s3_url!r})
            assert type(t).__name__ == "S3Transport", type(t)
            assert t.get("from-parent") == b"hello"
            assert t.put_if_absent("from-child", b"hi")
            """
        )
        subprocess.run([sys.executable, "-c", script], env=_env(s3_env), check=True, timeout=60)
        with open_transport(s3_url) as transport:
            assert transport.get("from-child") == b"hi"

    def test_fsspec_settings_configure_the_filesystem(
        self, s3_url: str, moto_server: Server, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """FSSPEC_S3_* settings (fsspec's config) reach s3fs: here the endpoint."""
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": moto_server.url})
        with S3Transport(s3_url) as transport:
            assert transport.put_if_absent("k", b"v") is True
            assert transport.get("k") == b"v"


class TestExclusiveCreate:
    def test_a_put_is_one_conditional_put(self, proxied: S3Transport, proxy: FaultProxy) -> None:
        """put_if_absent sends one PUT with If-None-Match: *; on a taken key too (412)."""
        assert proxied.put_if_absent("chunk", b"data") is True
        assert proxied.put_if_absent("chunk", b"second") is False
        assert proxy.methods() == ["PUT", "PUT"]
        assert [r.headers.get("if-none-match") for r in proxy.requests] == ["*", "*"]

    def test_a_409_conflict_is_retried_until_the_store_decides(
        self, s3_url: str, moto_server: Server
    ) -> None:
        """409 ConditionalRequestConflict is retried (with a pause), not taken as failure."""
        conflicts = _conflicts(first=2)
        with FaultProxy(moto_server.url, inject=conflicts) as proxy:
            transport = S3Transport(s3_url, endpoint_url=proxy.url)
            pauses: list[float] = []
            transport.sleep = pauses.append
            assert transport.put_if_absent("chunk", b"data") is True
            transport.close()
        assert proxy.methods() == ["PUT", "PUT", "PUT"]
        assert len(pauses) == 2 and all(0 < p < 1 for p in pauses)
        assert transport.stats.snapshot()["requests"] == {"put": 3}

    def test_conflicts_that_persist_are_a_transient_error(
        self, s3_url: str, moto_server: Server
    ) -> None:
        """After conflict_attempts 409s, put_if_absent raises TransientStoreError naming the key."""
        with FaultProxy(moto_server.url, inject=_conflicts(first=100)) as proxy:
            transport = S3Transport(s3_url, endpoint_url=proxy.url)
            transport.sleep = lambda _: None
            with pytest.raises(TransientStoreError) as info:
                transport.put_if_absent("chunk", b"data")
            transport.close()
        assert proxy.methods() == ["PUT"] * S3Transport.conflict_attempts
        assert f"{s3_url}/chunk" in str(info.value)
        assert "ConditionalRequestConflict" in str(info.value)


class TestFreshReads:
    def test_a_limited_read_is_a_ranged_get(self, proxied: S3Transport, proxy: FaultProxy) -> None:
        """get(max_size=n) is one GET of bytes 0..n; a read without a limit is not ranged."""
        assert proxied.put_if_absent("big", b"x" * 2000)
        proxy.clear()
        with pytest.raises(ObjectTooLargeError):
            proxied.get("big", max_size=1000)
        assert proxied.get("big") == b"x" * 2000
        assert [r.headers.get("range") for r in proxy.requests] == ["bytes=0-1000", None]


LISTED_KEYS = 1_010


@pytest.fixture(scope="module")
def listed(moto_server: Server, s3_bucket: str) -> str:
    """A location with 1,010 objects and two folders: more than one ListObjectsV2 page."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", endpoint_url=moto_server.url, skip_instance_cache=True
    )
    location = f"{s3_bucket}/many-{uuid.uuid4().hex[:8]}"
    objects = {f"{location}/{n:020d}": b"1" for n in range(LISTED_KEYS)}
    objects[f"{location}/folder-a/x"] = b"1"
    objects[f"{location}/folder-b/y/z"] = b"1"
    fs.pipe(objects, batch_size=64)
    return f"s3://{location}"


class TestListAfter:
    KEYS = LISTED_KEYS

    def test_a_listing_follows_continuation_pages(self, listed: str, s3_env: object) -> None:
        """Every name comes back once, sorted, across two pages of 1,000."""
        with S3Transport(listed) as transport:
            names = transport.list("")
            assert transport.stats.snapshot()["requests"] == {"list": 2}
        assert names == [f"{n:020d}" for n in range(self.KEYS)] + ["folder-a", "folder-b"]

    def test_list_after_starts_at_the_key(self, listed: str, s3_env: object) -> None:
        """list(after=k) asks the store to start after k: one page for the tail."""
        with S3Transport(listed) as transport:
            names = transport.list("", after=f"{1_000:020d}")
            assert transport.stats.snapshot()["requests"] == {"list": 1}
        assert names == [f"{n:020d}" for n in range(1_001, self.KEYS)] + ["folder-a", "folder-b"]

    def test_list_after_a_folder_skips_that_folder(self, listed: str, s3_env: object) -> None:
        """A folder's name sorts like an object's: after "folder-a" comes only "folder-b"."""
        with S3Transport(listed) as transport:
            assert transport.list("", after="folder-a") == ["folder-b"]
            assert transport.list("folder-b") == ["y"]


class TestClassifier:
    @pytest.mark.parametrize(
        ("error", "verdict"),
        [
            (client_error("ConditionalRequestConflict", 409), "conflict"),
            (through_s3fs(client_error("ConditionalRequestConflict", 409)), "conflict"),
            (client_error("OperationAborted", 409), "conflict"),
            (through_s3fs(client_error("PreconditionFailed", 412)), "exists"),
            (through_s3fs(client_error("SlowDown", 503)), "transient"),
            (through_s3fs(client_error("ServiceUnavailable", 503)), "transient"),
            (client_error("InternalError", 500), "transient"),
            (client_error("503", 503, op="HeadObject"), "transient"),
            (client_error("Throttling", 400), "transient"),
            (client_error("RequestTimeout", 400), "transient"),
            (OSError(errno.EBUSY, "busy"), "transient"),
            (OSError(errno.ECONNRESET, "reset"), "transient"),
            (TimeoutError("timed out"), "transient"),
            (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "transient"),
            (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), "transient"),
            (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), "transient"),
            (through_s3fs(client_error("NoSuchBucket", 404, op="GetObject")), "missing_bucket"),
            (through_s3fs(client_error("NoSuchKey", 404, op="GetObject")), "missing_key"),
            (through_s3fs(client_error("AccessDenied", 403)), "denied"),
            (through_s3fs(client_error("InvalidAccessKeyId", 403)), "denied"),
            (through_s3fs(client_error("SignatureDoesNotMatch", 403)), "denied"),
            (client_error("ExpiredToken", 400), "denied"),
            (botocore.exceptions.NoCredentialsError(), "denied"),
            (botocore.exceptions.ProfileNotFound(profile="nope"), "denied"),
            (botocore.exceptions.ParamValidationError(report="bad bucket name"), "permanent"),
            (client_error("InvalidArgument", 400), "permanent"),
        ],
    )
    def test_classifies_s3_failures(self, error: BaseException, verdict: str) -> None:
        """Each S3 failure, raw or as s3fs re-raises it, gets the verdict the transport acts on."""
        assert classify(error) == verdict

    @pytest.mark.parametrize(
        "error",
        [
            through_s3fs(client_error("OperationAborted", 409)),  # s3fs: OSError(EBUSY)
            through_s3fs(client_error("ConditionalRequestConflict", 409)),  # s3fs: OSError(EIO)
            OSError(errno.EBUSY, "Device or resource busy"),
        ],
    )
    def test_ebusy_and_409_are_transient_store_errors(self, error: OSError) -> None:
        """s3fs's OSError for a 409 (EBUSY, or EIO with the 409 as cause) is TransientStoreError."""
        with S3Transport("s3://b/p") as transport:
            translated = transport._error(error, "k", "write")
        assert isinstance(translated, TransientStoreError)
        assert "s3://b/p/k" in str(translated)

    def test_denied_is_permanent_and_says_what_to_check(self) -> None:
        """Refused credentials are PermanentStoreError pointing at the AWS settings."""
        error = through_s3fs(client_error("InvalidAccessKeyId", 403, "The key does not exist"))
        with S3Transport("s3://b/p") as transport:
            translated = transport._error(error, None, "list")
        assert isinstance(translated, PermanentStoreError)
        assert "s3://b/p" in str(translated) and "AWS_ACCESS_KEY_ID" in str(translated)


def _conflicts(first: int) -> Conflicts:
    return Conflicts(first)


class Conflicts:
    """Answer the first ``n`` PUTs with 409 ConditionalRequestConflict; forward the rest."""

    def __init__(self, n: int) -> None:
        self.left = n

    def __call__(self, request: Recorded) -> Reply | None:
        if request.method != "PUT" or self.left <= 0:
            return None
        self.left -= 1
        return 409, {"Content-Type": "application/xml"}, _CONFLICT


def _env(variables: dict[str, str]) -> dict[str, str]:
    import os

    return {**os.environ, **variables}
