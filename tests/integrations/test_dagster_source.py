"""The Dagster Pipes source and wire translation, without dagster installed.

Workers are simulated by writing exactly what dagster-pipes writes: JSON Lines appended to
a file (``json.dumps(message) + "\\n"``) and ``{n}.json`` chunks joined with newlines.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from pipes_bus import Context, PartitionKeyRange, PartitionTimeWindow
from pipes_bus._log.items import SessionCursor, StreamCursor
from pipes_bus.integrations.dagster._source import (
    BLOB_WRITER,
    FILE_WRITER,
    DagsterPipesSource,
)
from pipes_bus.integrations.dagster._translate import (
    CONTEXT_ENV,
    MESSAGES_ENV,
    context_data,
    dagster_metadata,
    exception_from_dagster,
    exception_to_dagster,
    message_from_dagster,
    message_to_dagster,
    metadata_from_dagster,
)
from pipes_bus.messages import (
    BoolValue,
    Check,
    Closed,
    Custom,
    ExceptionInfo,
    FloatValue,
    IntValue,
    JsonValue,
    Log,
    MarkdownValue,
    Materialization,
    Opened,
    Output,
    PathValue,
    Progress,
    TableColumn,
    TableValue,
    TextValue,
    TimestampValue,
    UnknownMessage,
    UrlValue,
)
from pipes_bus.orchestrator import Event, StreamFault
from pipes_bus.transports import open_transport
from pipes_bus.transports._memory import MemoryTransport
from tests.helpers import FakeClock


def msg(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Dagster Pipes message, as dagster-pipes builds it."""
    return {"__dagster_pipes_version": "0.1", "method": method, "params": params}


def line(method: str, params: dict[str, Any] | None = None) -> bytes:
    """One line of Dagster's file writer: ``json.dumps(message) + "\\n"``."""
    return (json.dumps(msg(method, params)) + "\n").encode()


def chunk(*messages: dict[str, Any]) -> bytes:
    """One chunk of Dagster's blob-store writers: messages joined with newlines."""
    return "\n".join(json.dumps(m) for m in messages).encode()


def decode(value: str) -> Any:
    """Decode a bootstrap variable exactly as dagster_pipes.decode_param does."""
    return json.loads(zlib.decompress(base64.b64decode(value)).decode("utf-8"))


def events(items: list[Event | StreamFault]) -> list[Event]:
    return [i for i in items if isinstance(i, Event)]


def faults(items: list[Event | StreamFault]) -> list[StreamFault]:
    return [i for i in items if isinstance(i, StreamFault)]


def customs(items: list[Event | StreamFault]) -> list[Any]:
    return [e.message.payload for e in events(items) if isinstance(e.message, Custom)]


@pytest.fixture
def local(tmp_path: Path) -> DagsterPipesSource:
    """A source on a local-directory bus, its variables already made."""
    transport = open_transport(str(tmp_path / "bus"))
    source = DagsterPipesSource(transport, "s-test", context=Context(run_id="r1"))
    source.env()
    return source


def append(source: DagsterPipesSource, data: bytes) -> None:
    assert source.path is not None
    with open(source.path, "ab") as f:
        f.write(data)


class TestBootstrap:
    def test_variables_decode_like_dagster_pipes_and_carry_the_context_in_dagsters_shape(
        self, tmp_path: Path
    ) -> None:
        """Both variables are base64(zlib(json)); the context maps field by field into PipesContextData."""
        context = Context(
            run_id="run-7",
            job_name="nightly",
            asset_keys=["orders", "db/customers"],
            partition_key_range=PartitionKeyRange("2024-01-01", "2024-01-03"),
            partition_time_window=PartitionTimeWindow("2024-01-01T00:00", "2024-01-04T00:00"),
            retry_number=2,
            code_versions={"orders": "v3"},
            provenance={
                "orders": {
                    "code_version": "v2",
                    "input_data_versions": {},
                    "is_user_provided": False,
                }
            },
            extras={"threshold": 0.5},
        )
        transport = open_transport(str(tmp_path / "bus"))
        env = DagsterPipesSource(transport, "s-1", context=context).env()
        assert decode(env[CONTEXT_ENV]) == {
            "data": {
                "asset_keys": ["orders", "db/customers"],
                "code_version_by_asset_key": {"orders": "v3", "db/customers": None},
                "provenance_by_asset_key": {
                    "orders": {
                        "code_version": "v2",
                        "input_data_versions": {},
                        "is_user_provided": False,
                    },
                    "db/customers": None,
                },
                "partition_key": None,
                "partition_key_range": {"start": "2024-01-01", "end": "2024-01-03"},
                "partition_time_window": {"start": "2024-01-01T00:00", "end": "2024-01-04T00:00"},
                "run_id": "run-7",
                "job_name": "nightly",
                "retry_number": 2,
                "extras": {"threshold": 0.5},
            }
        }
        assert decode(env[MESSAGES_ENV]) == {
            "path": str(tmp_path / "bus" / "s-1" / "dagster" / "messages.jsonl")
        }

    def test_no_asset_keys_is_not_an_asset_step_and_a_partition_key_gets_its_one_key_range(
        self,
    ) -> None:
        """Like Dagster: asset_keys None without assets; a partition key implies the range [key, key]."""
        data = context_data(Context(run_id="r", partition_key="2024-05-01"))
        assert data["asset_keys"] is None
        assert data["code_version_by_asset_key"] is None
        assert data["provenance_by_asset_key"] is None
        assert data["partition_key_range"] == {"start": "2024-05-01", "end": "2024-05-01"}

    def test_the_message_file_lives_in_the_session_directory_which_exists_before_launch(
        self, local: DagsterPipesSource, tmp_path: Path
    ) -> None:
        """On a local bus the default writer appends to {bus}/{session}/dagster/messages.jsonl."""
        assert local.path == str(tmp_path / "bus" / "s-test" / "dagster" / "messages.jsonl")
        assert os.path.isdir(os.path.dirname(local.path))

    def test_a_blob_store_bus_adds_bucket_and_a_key_prefix_inside_the_session(self) -> None:
        """On s3://bucket/root the blob writers get {bucket, key_prefix:
        root/session/streams/_dagster/messages}."""
        transport = MemoryTransport("memory://pipes/root")
        transport.url = "s3://pipes/root"
        source = DagsterPipesSource(transport, "s-9")
        try:
            params = decode(source.env()[MESSAGES_ENV])
            assert params["bucket"] == "pipes"
            assert params["key_prefix"] == "root/s-9/streams/_dagster/messages"
            assert source.path is not None and params["path"] == source.path
        finally:
            source.close()

    def test_a_bus_no_worker_can_open_gets_a_private_file_made_at_launch_removed_at_close(
        self,
    ) -> None:
        """memory:// has no file for the default writer: a private one, made by env(), deleted by close()."""
        source = DagsterPipesSource(MemoryTransport("memory://x"), "s-2")
        assert source.path is not None
        folder = os.path.dirname(source.path)
        assert not os.path.exists(folder)
        source.env()
        assert os.path.isdir(folder) and (os.stat(folder).st_mode & 0o777) == 0o700
        source.close()
        assert not os.path.exists(folder)

    def test_a_context_too_large_for_the_environment_goes_to_a_file_in_the_session(
        self, tmp_path: Path
    ) -> None:
        """Past the inline limit the context is written once, and DAGSTER_PIPES_CONTEXT holds its path."""
        transport = open_transport(str(tmp_path / "bus"))
        extras = {f"k{i}": os.urandom(16).hex() for i in range(8000)}
        env = DagsterPipesSource(transport, "s-3", context=Context(run_id="r", extras=extras)).env()
        params = decode(env[CONTEXT_ENV])
        assert list(params) == ["path"]
        assert json.loads(Path(params["path"]).read_text())["extras"] == extras

    def test_a_read_only_source_injects_nothing(self, tmp_path: Path) -> None:
        """With inject=False (following a session from elsewhere) env() is empty."""
        transport = open_transport(str(tmp_path / "bus"))
        assert DagsterPipesSource(transport, "s-4", inject=False).env() == {}


class TestFileStream:
    def test_only_complete_lines_are_consumed_and_the_rest_waits_for_its_end(
        self, local: DagsterPipesSource
    ) -> None:
        """A half-written line is kept with its offset and delivered, once, when its newline lands."""
        first = line("opened", {"extras": {}})
        second = line("report_custom_message", {"payload": "x" * 50})
        append(local, first + second[:20])
        assert [type(e.message) for e in events(local.poll())] == [Opened]
        assert local.poll() == []
        append(local, second[20:])
        assert customs(local.poll()) == ["x" * 50]
        assert local.poll() == []

    def test_a_file_written_one_byte_at_a_time_delivers_every_message_once_in_order(
        self, local: DagsterPipesSource
    ) -> None:
        """Polling after every single byte still yields each of 40 messages exactly once, in order."""
        data = line("opened", {"extras": {}}) + b"".join(
            line("report_custom_message", {"payload": i}) for i in range(40)
        )
        delivered: list[Event | StreamFault] = []
        for i in range(len(data)):
            append(local, data[i : i + 1])
            delivered += local.poll()
        assert customs(delivered) == list(range(40))
        assert [e.seq for e in events(delivered)] == list(range(41))
        assert faults(delivered) == []

    def test_a_malformed_line_is_a_fault_naming_the_file_and_line_and_reading_carries_on(
        self, local: DagsterPipesSource
    ) -> None:
        """Line 2 is not JSON: a corrupt fault at path:2, and lines 1 and 3 are delivered."""
        append(
            local,
            line("opened", {}) + b"{not json\n" + line("report_custom_message", {"payload": 3}),
        )
        items = local.poll()
        [fault] = faults(items)
        assert fault.key == f"{local.path}:2"
        assert fault.reason == "corrupt"
        assert fault.writer == FILE_WRITER
        assert "line 2" in fault.detail
        assert customs(items) == [3]

    def test_json_that_is_not_a_dagster_message_is_a_fault(self, local: DagsterPipesSource) -> None:
        """A JSON line without a method (someone else's output) is reported, not guessed at."""
        append(local, b'{"hello": 1}\n[1, 2]\n')
        assert [f.key for f in faults(local.poll())] == [f"{local.path}:1", f"{local.path}:2"]

    def test_nan_written_by_pythons_json_is_accepted(self, local: DagsterPipesSource) -> None:
        """json.dumps writes NaN; the message is delivered with the value as text metadata."""
        append(
            local,
            line(
                "report_asset_materialization",
                {
                    "asset_key": "a",
                    "data_version": None,
                    "metadata": {"ratio": {"raw_value": float("nan"), "type": "float"}},
                },
            ),
        )
        [event] = events(local.poll())
        assert isinstance(event.message, Materialization)
        assert event.message.metadata == {"ratio": TextValue("nan")}

    def test_the_writer_is_open_from_opened_until_closed(self, local: DagsterPipesSource) -> None:
        """open_writers holds dagster-file between its `opened` and its `closed`."""
        assert local.writers == [] and local.open_writers == []
        append(local, line("opened", {"extras": {}}))
        local.poll()
        assert local.writers == [FILE_WRITER] and local.open_writers == [FILE_WRITER]
        append(local, line("closed", {}))
        local.poll()
        assert local.writers == [FILE_WRITER] and local.open_writers == []

    def test_two_processes_appending_to_one_file_keep_it_open_until_both_close(
        self, local: DagsterPipesSource
    ) -> None:
        """Two `opened` and one `closed` still leave the stream open."""
        append(local, line("opened", {}) + line("opened", {}) + line("closed", {}))
        local.poll()
        assert local.open_writers == [FILE_WRITER]
        append(local, line("closed", {}))
        local.poll()
        assert local.open_writers == []

    def test_an_unfinished_last_line_is_reported_truncated_once_nobody_can_finish_it(
        self, tmp_path: Path
    ) -> None:
        """A stale partial line becomes a truncated fault on a final pass, never before."""
        clock = FakeClock(100.0)
        transport = open_transport(str(tmp_path / "bus"))
        source = DagsterPipesSource(transport, "s-t", clock=clock, tail_timeout=5.0)
        source.env()
        append(source, line("opened", {}) + b'{"__dagster_pipes_version": "0.1", "meth')
        assert len(events(source.poll())) == 1
        assert source.poll(final=True) == []  # it might still be written
        clock.now += 5.0
        assert source.poll() == []  # not final: keep waiting
        [fault] = source.poll(final=True)
        assert isinstance(fault, StreamFault)
        assert (fault.reason, fault.key) == ("truncated", f"{source.path}:2")
        assert source.poll(final=True) == []

    def test_a_last_line_without_newline_that_is_whole_is_delivered_at_the_end(
        self, local: DagsterPipesSource
    ) -> None:
        """After closed, a complete message missing only its newline is still delivered."""
        append(
            local, line("opened", {}) + line("closed", {}) + line("log", {"message": "late"})[:-1]
        )
        local.poll()
        [event] = events(local.poll(final=True))
        assert isinstance(event.message, Log) and event.message.message == "late"

    def test_a_cursor_skips_what_was_delivered_before_a_restart(self, tmp_path: Path) -> None:
        """Resuming with a cursor at seq 3 delivers seq 3 onwards, nothing twice."""
        transport = open_transport(str(tmp_path / "bus"))
        first = DagsterPipesSource(transport, "s-c")
        first.env()
        append(
            first,
            line("opened", {})
            + b"".join(line("report_custom_message", {"payload": i}) for i in range(5)),
        )
        cursor = SessionCursor("s-c", {FILE_WRITER: StreamCursor(0, 3)})
        again = DagsterPipesSource(transport, "s-c", inject=False, cursor=cursor)
        assert [e.seq for e in events(again.poll())] == [3, 4, 5]


class TestHostileFile:
    """What anyone who can write to the bus may plant at the Dagster messages file."""

    def test_a_line_longer_than_the_limit_is_skipped_with_bounded_memory(
        self, tmp_path: Path
    ) -> None:
        """A line over max_line bytes is one too_large fault; memory holds at most the limit,
        and the lines after it are delivered."""
        transport = open_transport(str(tmp_path / "bus"))
        source = DagsterPipesSource(transport, "s-l", max_read=64 * 1024)
        source.env()
        source._file.max_line = 100_000  # type: ignore[union-attr]
        append(source, line("opened", {}) + b'{"method": "log", "params": {"message": "')
        items = []
        for _ in range(40):
            append(source, b"x" * 50_000)
            items += source.poll()
            assert len(source._file.tail) <= 100_000 + 64 * 1024  # type: ignore[union-attr]
        append(source, b'"}}\n' + line("report_custom_message", {"payload": 1}))
        items += source.poll()
        assert [(f.reason, f.key) for f in faults(items)] == [("too_large", f"{source.path}:2")]
        assert customs(items) == [1]

    @pytest.mark.parametrize("kind", ["fifo", "zero"])
    def test_a_fifo_or_device_at_the_file_is_refused_at_once(
        self, tmp_path: Path, kind: str
    ) -> None:
        """A FIFO or a link to /dev/zero at the messages file is one foreign fault, no hang."""
        transport = open_transport(str(tmp_path / "bus"))
        source = DagsterPipesSource(transport, "s-f")
        source.env()
        assert source.path is not None
        if kind == "fifo":
            os.mkfifo(source.path)
        else:
            os.symlink("/dev/zero", source.path)
        [fault] = source.poll()
        assert (fault.reason, fault.key) == ("foreign", source.path)
        assert source.poll(final=True) == []

    def test_a_line_nested_too_deep_is_a_fault_and_the_rest_is_delivered(
        self, local: DagsterPipesSource
    ) -> None:
        """A Dagster line nested 5,000 deep is a corrupt fault, not a RecursionError."""
        deep = b'{"method": "report_custom_message", "params": {"payload": '
        deep += b"[" * 5000 + b"]" * 5000 + b"}}\n"
        append(local, line("opened", {}) + deep + line("report_custom_message", {"payload": 2}))
        items = local.poll()
        assert [(f.reason, f.key) for f in faults(items)] == [("corrupt", f"{local.path}:2")]
        assert customs(items) == [2]


class TestSignedSessions:
    """Dagster Pipes messages carry no signature: a signed session never trusts them."""

    def test_an_untrusted_source_injects_nothing_and_delivers_nothing(self, tmp_path: Path) -> None:
        """Every line found is an unauthenticated fault; no writer is counted as open."""
        transport = open_transport(str(tmp_path / "bus"))
        source = DagsterPipesSource(transport, "s-x", trusted=False)
        assert source.env() == {}
        assert source.path is not None
        os.makedirs(os.path.dirname(source.path), exist_ok=True)
        with open(source.path, "ab") as f:
            f.write(line("opened", {}) + line("closed", {}))
        items = source.poll()
        assert events(items) == []
        assert [(f.reason, f.lost) for f in faults(items)] == [
            ("unauthenticated", (0, 0)),
            ("unauthenticated", (1, 1)),
        ]
        assert (source.writers, source.open_writers) == ([], [])


class TestChunks:
    def test_buses_without_blob_writers_cost_no_store_requests(self, tmp_path: Path) -> None:
        """On local and memory buses nobody writes chunks, so polling makes no request at all."""
        for transport in (open_transport(str(tmp_path / "bus")), MemoryTransport("memory://c0")):
            source = DagsterPipesSource(transport, "s-q")
            source.env()
            for final in (False, False, True):
                assert source.poll(final=final) == []
            assert transport.stats.total == 0
            source.close()

    def put(self, source: DagsterPipesSource, n: int, data: bytes) -> None:
        source.transport.put_if_absent(f"{source.session}/streams/_dagster/messages/{n}.json", data)

    def test_every_available_chunk_is_read_in_one_poll_in_order(self) -> None:
        """Five chunks waiting: one poll delivers all 1+5*3 messages, seq 0..15, chunk numbers kept."""
        source = DagsterPipesSource(
            MemoryTransport("memory://chunks-1"), "s-b", inject=False, read_chunks=True
        )
        self.put(source, 1, chunk(msg("opened", {"extras": {}})))
        for n in range(2, 7):
            self.put(
                source,
                n,
                chunk(*(msg("report_custom_message", {"payload": (n, i)}) for i in range(3))),
            )
        items = source.poll()
        assert customs(items) == [[n, i] for n in range(2, 7) for i in range(3)]
        assert [e.seq for e in events(items)] == list(range(16))
        assert [e.chunk for e in events(items)][:4] == [1, 2, 2, 2]
        assert source.writers == [BLOB_WRITER]

    def test_probes_are_spaced_while_the_work_runs_but_final_passes_always_read(self) -> None:
        """Within probe_interval no GET is made; a final pass reads at once."""
        clock = FakeClock(100.0)
        transport = MemoryTransport("memory://chunks-2")
        source = DagsterPipesSource(
            transport, "s-b", inject=False, read_chunks=True, clock=clock, probe_interval=1.0
        )
        source.poll()
        self.put(source, 1, chunk(msg("opened", {})))
        gets = transport.stats.requests.get("get", 0)
        assert source.poll() == []
        assert transport.stats.requests.get("get", 0) == gets
        assert len(source.poll(final=True)) == 1
        self.put(source, 2, chunk(msg("closed", {})))
        clock.now += 1.0
        assert [type(e.message) for e in events(source.poll())] == [Closed]
        assert source.open_writers == []

    def test_a_missing_chunk_is_a_gap_fault_at_the_end_and_later_chunks_are_read(self) -> None:
        """Chunks 1 and 3 exist: chunk 3 is delivered on the final pass after a gap fault naming 2.json."""
        source = DagsterPipesSource(
            MemoryTransport("memory://chunks-3"), "s-b", inject=False, read_chunks=True
        )
        self.put(source, 1, chunk(msg("opened", {})))
        self.put(source, 3, chunk(msg("closed", {})))
        assert len(source.poll()) == 1
        items = source.poll(final=True)
        [fault] = faults(items)
        assert fault.reason == "gap"
        assert fault.key == "s-b/streams/_dagster/messages/2.json"
        assert [type(e.message) for e in events(items)] == [Closed]

    def test_a_malformed_line_in_a_chunk_names_the_key_and_line(self) -> None:
        """Line 2 of chunk 1 is garbage: a fault at key:2; lines 1 and 3 are delivered."""
        source = DagsterPipesSource(
            MemoryTransport("memory://chunks-4"), "s-b", inject=False, read_chunks=True
        )
        self.put(source, 1, chunk(msg("opened", {})) + b"\n{oops\n" + chunk(msg("closed", {})))
        items = source.poll()
        assert [f.key for f in faults(items)] == ["s-b/streams/_dagster/messages/1.json:2"]
        assert len(events(items)) == 2

    def test_an_oversized_chunk_is_skipped_with_a_fault(self) -> None:
        """A chunk above max_chunk_bytes is reported too_large and the next one is read."""
        source = DagsterPipesSource(
            MemoryTransport("memory://chunks-5"),
            "s-b",
            inject=False,
            read_chunks=True,
            max_chunk_bytes=200,
        )
        self.put(
            source,
            1,
            chunk(*(msg("report_custom_message", {"payload": "x" * 50}) for _ in range(5))),
        )
        self.put(source, 2, chunk(msg("opened", {})))
        items = source.poll()
        assert [f.reason for f in faults(items)] == ["too_large"]
        assert [type(e.message) for e in events(items)] == [Opened]


class TestTranslation:
    def test_custom_log_and_stream_messages(self) -> None:
        """report_custom_message, log and log_external_stream become Custom, Log and Output."""
        assert message_from_dagster(
            msg("report_custom_message", {"payload": {"a": [1]}}), writer="w"
        ) == Custom(payload={"a": [1]})
        assert message_from_dagster(
            msg("log", {"message": "hi", "level": "WARNING"}), writer="w"
        ) == Log(message="hi", level="warning", logger="dagster-pipes")
        assert message_from_dagster(
            msg("log_external_stream", {"stream": "stderr", "text": "boom\n", "extras": {}}),
            writer="w",
        ) == Output(stream="stderr", text="boom\n")

    def test_materialization_metadata_becomes_typed_values(self) -> None:
        """Every Dagster metadata type maps to the matching typed value; raw values are inferred."""
        metadata = {
            "text": {"raw_value": "t", "type": "text"},
            "url": {"raw_value": "http://x", "type": "url"},
            "path": {"raw_value": "/p", "type": "path"},
            "nb": {"raw_value": "/n.ipynb", "type": "notebook"},
            "json": {"raw_value": {"a": 1}, "type": "json"},
            "md": {"raw_value": "# h", "type": "md"},
            "float": {"raw_value": 2, "type": "float"},
            "int": {"raw_value": 3, "type": "int"},
            "bool": {"raw_value": True, "type": "bool"},
            "ts": {"raw_value": 1700000000.5, "type": "timestamp"},
            "null": {"raw_value": None, "type": "null"},
            "run": {"raw_value": "abc", "type": "dagster_run"},
            "asset": {"raw_value": "a/b", "type": "asset"},
            "table": {
                "raw_value": {"records": [{"x": 1}], "schema": [{"name": "x", "type": "int"}]},
                "type": "table",
            },
            "infer": {"raw_value": 1.5, "type": "__infer__"},
            "raw": 7,
        }
        message = message_from_dagster(
            msg(
                "report_asset_materialization",
                {"asset_key": "orders", "data_version": "v1", "metadata": metadata},
            ),
            writer="w",
        )
        assert message == Materialization(
            asset_key="orders",
            data_version="v1",
            metadata={
                "text": TextValue("t"),
                "url": UrlValue("http://x"),
                "path": PathValue("/p"),
                "nb": PathValue("/n.ipynb"),
                "json": JsonValue({"a": 1}),
                "md": MarkdownValue("# h"),
                "float": FloatValue(2.0),
                "int": IntValue(3),
                "bool": BoolValue(True),
                "ts": TimestampValue(1700000000.5),
                "null": JsonValue(None),
                "run": TextValue("abc"),
                "asset": TextValue("a/b"),
                "table": TableValue(
                    records=[{"x": 1}], columns=[TableColumn(name="x", type="int")]
                ),
                "infer": FloatValue(1.5),
                "raw": IntValue(7),
            },
        )

    def test_check_severity_maps_to_warn_and_error(self) -> None:
        """WARN -> warn, ERROR (and the default) -> error."""
        base = {"asset_key": "a", "check_name": "c", "passed": False, "metadata": None}
        warn = message_from_dagster(
            msg("report_asset_check", {**base, "severity": "WARN"}), writer="w"
        )
        error = message_from_dagster(
            msg("report_asset_check", {**base, "severity": "ERROR"}), writer="w"
        )
        assert warn == Check(asset_key="a", check_name="c", passed=False, severity="warn")
        assert isinstance(error, Check) and error.severity == "error"

    def test_closed_carries_the_exception_with_its_cause_chain(self) -> None:
        """Dagster's {message, stack, name, cause, context} becomes ExceptionInfo, type prefix dropped."""
        exc = {
            "message": "ValueError: bad row\n",
            "stack": ['  File "job.py", line 3\n'],
            "name": "ValueError",
            "cause": {
                "message": "KeyError: 'id'\n",
                "stack": [],
                "name": "KeyError",
                "cause": None,
                "context": None,
            },
            "context": None,
        }
        closed = message_from_dagster(msg("closed", {"exception": exc}), writer="w", count=9)
        assert isinstance(closed, Closed)
        assert closed.count == 9
        assert closed.exception == ExceptionInfo(
            type="ValueError",
            message="bad row",
            stack=['  File "job.py", line 3\n'],
            cause=ExceptionInfo(type="KeyError", message="'id'"),
        )
        assert isinstance(message_from_dagster(msg("closed", {}), writer="w"), Closed)

    def test_opened_names_the_writer_and_keeps_the_extras(self) -> None:
        """opened -> Opened with the stream's writer id and Dagster's opened extras."""
        opened = message_from_dagster(msg("opened", {"extras": {"k": 1}}), writer="dagster-file")
        assert isinstance(opened, Opened)
        assert opened.info.id == "dagster-file"
        assert opened.extras == {"k": 1}

    def test_an_unknown_method_or_unusable_params_become_unknown_messages(self) -> None:
        """Nothing is dropped: a newer method, or a check without a name, arrives as UnknownMessage."""
        newer = message_from_dagster(msg("report_asset_lineage", {"x": 1}), writer="w")
        assert isinstance(newer, UnknownMessage) and newer.kind == "report_asset_lineage"
        assert newer.data["params"] == {"x": 1}
        bad = message_from_dagster(
            msg("report_asset_check", {"asset_key": "a", "passed": True}), writer="w"
        )
        assert isinstance(bad, UnknownMessage) and "check_name" in bad.reason

    def test_metadata_survives_the_round_trip_through_dagsters_shape(self) -> None:
        """pipes_bus -> Dagster -> pipes_bus keeps every typed metadata value."""
        metadata = {
            "t": TextValue("t"),
            "i": IntValue(1),
            "f": FloatValue(0.5),
            "b": BoolValue(False),
            "j": JsonValue([1, 2]),
            "n": JsonValue(None),
            "u": UrlValue("http://x"),
            "p": PathValue("/x"),
            "m": MarkdownValue("*"),
            "ts": TimestampValue(1.5),
            "tab": TableValue(records=[{"a": 1}], columns=[TableColumn(name="a", type="int")]),
        }
        assert metadata_from_dagster(dagster_metadata(metadata)) == metadata

    def test_a_table_without_columns_gets_a_schema_from_its_records(self) -> None:
        """Dagster needs a schema: the column names come from the records, typed string."""
        entry = dagster_metadata({"t": TableValue(records=[{"a": 1}, {"b": 2}])})["t"]
        assert entry["raw_value"]["schema"] == [
            {"name": "a", "type": "string", "description": None},
            {"name": "b", "type": "string", "description": None},
        ]

    def test_pipes_bus_messages_become_dagster_messages(self) -> None:
        """Check severities, log levels, streams and exceptions take Dagster's spelling."""
        check = message_to_dagster(
            Check(asset_key="a", check_name="c", passed=True, severity="warn")
        )
        assert check is not None and check["params"]["severity"] == "WARN"
        log = message_to_dagster(Log(message="m", level="warn"))
        assert log is not None and log["params"] == {"message": "m", "level": "warning"}
        progress = message_to_dagster(Progress(current=3, total=10, unit="files"))
        assert progress is not None and progress["params"]["message"] == "progress: 3/10 files"
        info = ExceptionInfo(
            type="mod.Boom", message="x", cause=ExceptionInfo(type="KeyError", message="k")
        )
        assert exception_to_dagster(info) == {
            "message": "mod.Boom: x",
            "stack": [],
            "name": "Boom",
            "cause": {
                "message": "KeyError: k",
                "stack": [],
                "name": "KeyError",
                "cause": None,
                "context": None,
            },
            "context": None,
        }
        assert exception_from_dagster(exception_to_dagster(info)).message == "x"


class TestImports:
    def test_the_core_never_imports_the_dagster_integration(self) -> None:
        """import pipes_bus and pipes_bus.orchestrator load no dagster, dagster_pipes or integrations."""
        code = (
            "import sys, pipes_bus, pipes_bus.orchestrator; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_pipes') "
            "or m.startswith('pipes_bus.integrations')))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]"
