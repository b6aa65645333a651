"""Real local store servers (moto, fake-gcs-server, Azurite), once per test session; a
plugin of the root conftest, so every test directory can ask for them.

A server starts the first time a test asks for it and stops when the session ends. Each
store has an ``*_env`` fixture that configures this test's environment the way a user
would (``AWS_ENDPOINT_URL_S3``, ``STORAGE_EMULATOR_HOST``,
``AZURE_STORAGE_CONNECTION_STRING``) and a ``*_url`` fixture: a fresh, empty location.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipes_bus.testing.servers import (
    AzuriteMissing,
    Server,
    azurite_connection_string,
    start_azurite,
    start_fake_gcs,
    start_moto,
)

S3_BUCKET = "pipes-bus-tests"
GCS_BUCKET = "pipes-bus-tests"
AZURE_CONTAINER = "pipes-bus-tests"


def _fresh(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def _set(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]) -> dict[str, str]:
    """Set ``variables`` for this test, and keep loopback traffic away from any proxy."""
    variables = {**variables, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return variables


# --- S3: moto ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_server() -> Iterator[Server]:
    """moto's S3 server, for the whole session."""
    server = start_moto()
    yield server
    server.stop()


def _s3_variables(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Keep a developer's own ~/.aws out of the tests.
        "AWS_CONFIG_FILE": str(Path("/nonexistent/aws-config")),
        "AWS_SHARED_CREDENTIALS_FILE": str(Path("/nonexistent/aws-credentials")),
    }


_S3_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE")


@pytest.fixture(scope="session")
def s3_bucket(moto_server: Server) -> str:
    """A bucket on the moto server, created once."""
    import s3fs

    fs = s3fs.S3FileSystem(
        key="testing", secret="testing", endpoint_url=moto_server.url, skip_instance_cache=True
    )
    fs.call_s3("create_bucket", Bucket=S3_BUCKET)
    return S3_BUCKET


@pytest.fixture
def s3_env(moto_server: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's environment points boto at moto, as a user would; returns the variables."""
    for name in _S3_CLEARED:
        monkeypatch.delenv(name, raising=False)
    return _set(monkeypatch, _s3_variables(moto_server.url))


@pytest.fixture
def s3_url(s3_env: dict[str, str], s3_bucket: str) -> str:
    """A fresh, empty location in the test bucket."""
    return f"s3://{s3_bucket}/{_fresh('t')}"


# --- GCS: fake-gcs-server ---------------------------------------------------------------


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Server]:
    """fake-gcs-server, for the whole session."""
    server = start_fake_gcs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_bucket(gcs_server: Server) -> str:
    """A bucket on fake-gcs-server, created once."""
    import pipes_bus_gcs  # noqa: F401 - sets GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT before gcsfs loads
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(endpoint_url=gcs_server.url, token="anon", skip_instance_cache=True)
    fs.mkdir(GCS_BUCKET)
    return GCS_BUCKET


@pytest.fixture
def gcs_env(gcs_server: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's environment points gcsfs at the emulator; returns the variables."""
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return _set(
        monkeypatch,
        {"STORAGE_EMULATOR_HOST": gcs_server.url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"},
    )


@pytest.fixture
def gcs_url(gcs_env: dict[str, str], gcs_bucket: str) -> str:
    """A fresh, empty location in the test bucket."""
    return f"gs://{gcs_bucket}/{_fresh('t')}"


# --- Azure Blob: Azurite ----------------------------------------------------------------


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Server]:
    """Azurite's blob service, for the whole session. Fails (never skips) if not installed."""
    missing = None
    try:
        server = start_azurite()
    except AzuriteMissing as exc:
        missing = str(exc)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    yield server
    server.stop()


_AZURE_CLEARED = (
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCOUNT",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CLIENT_ID",
    "AZURE_STORAGE_ANON",
)


@pytest.fixture(scope="session")
def azure_container(azurite_server: Server) -> str:
    """A container on Azurite, created once."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(
        azurite_connection_string(azurite_server)
    ) as client:
        client.create_container(AZURE_CONTAINER)
    return AZURE_CONTAINER


@pytest.fixture
def azure_env(azurite_server: Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This test's environment holds Azurite's connection string; returns the variables."""
    for name in _AZURE_CLEARED:
        monkeypatch.delenv(name, raising=False)
    return _set(
        monkeypatch,
        {"AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(azurite_server)},
    )


@pytest.fixture
def azure_url(azure_env: dict[str, str], azure_container: str) -> str:
    """A fresh, empty location in the test container."""
    return f"az://{azure_container}/{_fresh('t')}"


# --- any store ----------------------------------------------------------------------------

STORES = ["dir", "s3", "gcs", "azure"]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty bus on each store in turn: a directory, then each local server."""
    if request.param == "dir":
        return str(tmp_path / "bus")
    return str(request.getfixturevalue(f"{request.param}_url"))
