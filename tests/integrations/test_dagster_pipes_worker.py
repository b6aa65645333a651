"""Unmodified Dagster Pipes workers (the real dagster-pipes package) under a pipes_bus session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipes_bus.messages import (
    Check,
    Closed,
    FloatValue,
    IntValue,
    JsonValue,
    Log,
    MarkdownValue,
    Materialization,
    Output,
    TextValue,
)
from pipes_bus.transports import open_transport
from tests.integrations.conftest import BlobStore
from tests.integrations.dagster_workers import payloads, run_dagster_worker

pytest.importorskip(
    "dagster_pipes", reason="dagster_pipes is not installed: pip install 'pipes-bus[dagster]'"
)


class TestWorkerSide:
    def test_the_worker_side_integration_never_imports_dagster(self) -> None:
        """PipesBusMessageWriter and PipesBusContextLoader load dagster_pipes, never dagster."""
        code = (
            "import sys; "
            "from pipes_bus.integrations.dagster import PipesBusContextLoader, PipesBusMessageWriter; "
            "print('dagster' in sys.modules, 'dagster_pipes' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["False", "True"]


class TestDefaultFileWriter:
    def test_100000_custom_messages_arrive_exactly_once_in_order(self, tmp_path: Path) -> None:
        """The default (file) writer's 100,000 messages all arrive, once each, in order, with seq 0..N+1."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                for i in range(100_000):
                    pipes.report_custom_message(i)
            """,
        )
        assert result.ok, result.problems()
        assert payloads(result) == list(range(100_000))
        assert result.counts == {"opened": 1, "custom": 100_000, "closed": 1}
        writer = result.writers["dagster-file"]
        assert writer.closed and writer.messages == 100_002
        assert result.faults == []

    def test_the_worker_sees_the_sessions_context(self, tmp_path: Path) -> None:
        """asset key, partition, run id, job, retry number and extras reach PipesContext."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                pipes.report_custom_message({
                    "asset_key": pipes.asset_key,
                    "code_version": pipes.code_version,
                    "partition_key": pipes.partition_key,
                    "partition_key_range": pipes.partition_key_range,
                    "run_id": pipes.run_id,
                    "job_name": pipes.job_name,
                    "retry_number": pipes.retry_number,
                    "threshold": pipes.get_extra("threshold"),
                })
            """,
            context={
                "run_id": "run-42",
                "job_name": "nightly",
                "asset_keys": ["orders"],
                "code_versions": {"orders": "v7"},
                "partition_key": "2024-05-01",
                "retry_number": 1,
                "extras": {"threshold": 0.25},
            },
        )
        assert payloads(result) == [
            {
                "asset_key": "orders",
                "code_version": "v7",
                "partition_key": "2024-05-01",
                "partition_key_range": {"start": "2024-05-01", "end": "2024-05-01"},
                "run_id": "run-42",
                "job_name": "nightly",
                "retry_number": 1,
                "threshold": 0.25,
            }
        ]

    def test_materializations_checks_logs_and_streams_are_translated(self, tmp_path: Path) -> None:
        """report_asset_materialization/check, log and log_external_stream become typed events."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                pipes.log.warning("rows look low")
                pipes.report_asset_materialization(
                    metadata={"rows": 12, "note": {"raw_value": "**ok**", "type": "md"},
                              "ratio": 0.5, "owner": "data", "cols": ["a", "b"]},
                    data_version="v9",
                )
                pipes.report_asset_check("not_empty", passed=False, severity="WARN",
                                         metadata={"rows": 12})
                pipes.log_external_stream("stderr", "spark says hi\\n")
            """,
            context={"asset_keys": ["orders"]},
        )
        assert result.ok, result.problems()
        [materialization] = [e.message for e in result.materializations]
        assert materialization == Materialization(
            asset_key="orders",
            data_version="v9",
            metadata={
                "rows": IntValue(12),
                "note": MarkdownValue("**ok**"),
                "ratio": FloatValue(0.5),
                "owner": TextValue("data"),
                "cols": JsonValue(["a", "b"]),
            },
        )
        [check] = [e.message for e in result.checks]
        assert check == Check(
            asset_key="orders",
            check_name="not_empty",
            passed=False,
            severity="warn",
            metadata={"rows": IntValue(12)},
        )
        [log] = [e.message for e in result.logs]
        assert isinstance(log, Log) and (log.message, log.level) == ("rows look low", "warning")
        [output] = [e.message for e in result.outputs]
        assert output == Output(stream="stderr", text="spark says hi\n")
        last = result.writers["dagster-file"].last
        assert last is not None and isinstance(last.message, Closed)

    def test_an_exception_in_the_worker_closes_with_it(self, tmp_path: Path) -> None:
        """The block raises: `closed` carries ValueError and its cause, and the session failed."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                pipes.report_custom_message("before")
                try:
                    {}["id"]
                except KeyError as exc:
                    raise ValueError("bad row") from exc
            """,
        )
        assert payloads(result) == ["before"]
        [failed] = result.failed
        assert failed.id == "dagster-file"
        assert failed.exception is not None
        assert (failed.exception.type, failed.exception.message) == ("ValueError", "bad row")
        assert failed.exception.cause is not None and failed.exception.cause.type == "KeyError"
        assert any("raise ValueError" in frame for frame in failed.exception.stack)
        assert result.exit_code == 1
        assert result.exit_status() == 1

    def test_a_worker_killed_before_closing_is_reported_incomplete(self, tmp_path: Path) -> None:
        """os._exit without `closed`: after grace the writer is named with its last message."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            import os
            from dagster_pipes import open_dagster_pipes

            pipes = open_dagster_pipes()
            pipes.report_custom_message(1)
            os._exit(0)
            """,
            grace=0.5,
        )
        [incomplete] = result.incomplete
        assert incomplete.id == "dagster-file"
        assert result.problems() == [
            "writer dagster-file never closed; its last delivered message was #1 (custom)"
        ]
        assert result.exit_status() == 4

    def test_stdout_and_stderr_are_carried_when_the_session_captures_output(
        self, tmp_path: Path
    ) -> None:
        """include_stdio asks Dagster's writer to tee the worker's stdout/stderr into Output events."""
        result, _ = run_dagster_worker(
            tmp_path,
            """
            import sys
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as pipes:
                print("to stdout", flush=True)
                print("to stderr", file=sys.stderr, flush=True)
            """,
            include_stdio=True,
        )
        assert result.ok, result.problems()
        text = {"stdout": "", "stderr": ""}
        for event in result.outputs:
            assert isinstance(event.message, Output)
            text[event.message.stream] += event.message.text
        assert "to stdout\n" in text["stdout"]
        assert "to stderr\n" in text["stderr"]
        assert result.counts["opened"] == 1


S3_WORKER = """
import os, sys, time
import boto3
from dagster_pipes import PipesS3MessageWriter, open_dagster_pipes

client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], region_name="us-east-1")
count, rate = int(sys.argv[1]), float(sys.argv[2])
with open_dagster_pipes(message_writer=PipesS3MessageWriter(client, interval=1)) as pipes:
    start = time.monotonic()
    for sent in range(count):
        pipes.report_custom_message(sent)
        time.sleep(max(0.0, start + (sent + 1) / rate - time.monotonic()))
    pipes.report_custom_message({"sent": count})
"""


GCS_WORKER = """
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from dagster_pipes import PipesGCSMessageWriter, open_dagster_pipes

client = storage.Client(project="test", credentials=AnonymousCredentials())
with open_dagster_pipes(message_writer=PipesGCSMessageWriter(client, interval=1)) as pipes:
    for i in range(300):
        pipes.report_custom_message(i)
"""

AZURE_WORKER = """
import os
from azure.storage.blob import BlobServiceClient
from dagster_pipes import PipesAzureBlobStorageMessageWriter, open_dagster_pipes

client = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
with open_dagster_pipes(
    message_writer=PipesAzureBlobStorageMessageWriter(client, interval=1)
) as pipes:
    for i in range(300):
        pipes.report_custom_message(i)
"""


class TestBlobStoreWriter:
    @pytest.mark.filterwarnings("ignore:Using the generic fsspec transport")
    @pytest.mark.parametrize(
        ("store", "worker"),
        [("gcs_store", GCS_WORKER), ("azure_store", AZURE_WORKER)],
        ids=["gcs", "azure"],
    )
    def test_gcs_and_azure_writers_deliver_into_the_sessions_prefix(
        self, tmp_path: Path, request: pytest.FixtureRequest, store: str, worker: str
    ) -> None:
        """Dagster's GCS and Azure writers, given {bucket, key_prefix} in the session: all 300 messages."""
        blob: BlobStore = request.getfixturevalue(store)
        result, _ = run_dagster_worker(
            tmp_path, worker, bus=blob.bus, storage_options=blob.storage_options, env=blob.env
        )
        assert result.ok, result.problems()
        assert payloads(result) == list(range(300))
        assert list(result.writers) == ["dagster-blob"]
        with open_transport(blob.bus, **blob.storage_options) as transport:
            names = transport.list(f"{result.session}/streams/_dagster/messages")
        assert names and all(n.endswith(".json") for n in names)

    @pytest.mark.slow
    @pytest.mark.filterwarnings("ignore:Using the generic fsspec transport")
    def test_s3_writer_with_interval_1_for_40_s_delivers_every_message(
        self, tmp_path: Path, s3_endpoint: str
    ) -> None:
        """PipesS3MessageWriter(interval=1), 4,000 messages at 100 msg/s into an s3:// session:
        every one delivered, in order, from every chunk Dagster uploaded."""
        result, _ = run_dagster_worker(
            tmp_path,
            S3_WORKER,
            bus="s3://pipes/bus",
            storage_options={"endpoint_url": s3_endpoint},
            env={"S3_ENDPOINT": s3_endpoint},
            args=["4000", "100"],
        )
        assert result.ok, result.problems()
        assert payloads(result) == [*range(4000), {"sent": 4000}]
        assert result.counts == {"opened": 1, "custom": 4001, "closed": 1}
        assert list(result.writers) == ["dagster-blob"]
        # Dagster uploads a chunk about every 2 s at interval=1: every one on the store
        # was read, and nothing else.
        with open_transport("s3://pipes/bus", endpoint_url=s3_endpoint) as transport:
            stored = transport.list(f"{result.session}/streams/_dagster/messages")
        read = {e.chunk for e in result.custom_messages}
        assert read == {int(name.removesuffix(".json")) for name in stored}
        assert len(read) > 1
