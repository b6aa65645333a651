"""Dagster Pipes interoperability, without importing dagster.

Two things live here, both stdlib + msgspec + pipes_bus only:

- The wire translation between Dagster Pipes messages (``{"__dagster_pipes_version": "0.1",
  "method": ..., "params": ...}``) and pipes_bus messages, in both directions, with the
  context shape Dagster's ``PipesContextData`` expects.
- :class:`DagsterPipesSource`, a :class:`~pipes_bus.orchestrator.MessageSource` that lets an
  unmodified Dagster Pipes worker (``dagster_pipes.open_dagster_pipes()``) report into a
  pipes_bus session. It injects ``DAGSTER_PIPES_CONTEXT`` and ``DAGSTER_PIPES_MESSAGES``
  and reads what the worker writes:

  - the default message writer's JSON Lines file (``{"path": ...}``), a file in the
    session's directory when the bus is a local directory, else a private temporary file.
    Only complete lines are consumed; a half-written line waits for its end;
  - the blob-store writers' ``{key_prefix}/{n}.json`` chunks (``{"bucket", "key_prefix"}``,
    inside the session's prefix when the bus is on S3, GCS or Azure). Every available chunk
    is read on every poll, in order, and the final passes read until nothing more appears.

  Each place is one writer stream (``dagster-file``, ``dagster-blob``); ``seq`` is the
  message's index in it. A line that is not a Dagster message becomes a
  :class:`~pipes_bus.StreamFault` naming the file or key and the line, and reading carries on.

The Dagster-side classes (a ``PipesMessageReader``, a ``PipesContextInjector`` and the
worker's ``PipesMessageWriter``) are in :mod:`pipes_bus.integrations.dagster`.
"""

from __future__ import annotations

import base64
import errno
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, ObjectTooLargeError, StoreError
from pipes_bus._log.items import Event, SessionCursor, StreamFault
from pipes_bus._orchestrator.session import MessageSource, Session
from pipes_bus._wire.bootstrap import Context
from pipes_bus._wire.limits import MAX_NESTING, MiB, json_too_deep
from pipes_bus._wire.schema import (
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
    Message,
    MetadataValue,
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
    WriterInfo,
    metadata_value,
)
from pipes_bus.transports import Transport

__all__ = [
    "CONTEXT_ENV",
    "MESSAGES_ENV",
    "PIPES_PROTOCOL_VERSION",
    "DagsterPipesSource",
    "context_data",
    "dagster_metadata",
    "dagster_source",
    "decode_param",
    "encode_param",
    "ensure_dagster_source",
    "exception_from_dagster",
    "exception_to_dagster",
    "message_from_dagster",
    "message_to_dagster",
    "metadata_from_dagster",
]

# The key of DAGSTER_PIPES_MESSAGES that carries the pipes_bus session bootstrap.
PARAMS_KEY = "pipes_bus"
# The key of DAGSTER_PIPES_CONTEXT that points at a context object on the bus.
CONTEXT_PARAMS_KEY = "pipes_bus_context"
CONTEXT_ENV = "DAGSTER_PIPES_CONTEXT"
MESSAGES_ENV = "DAGSTER_PIPES_MESSAGES"
VERSION_FIELD = "__dagster_pipes_version"
PIPES_PROTOCOL_VERSION = "0.1"
FILE_WRITER = "dagster-file"
BLOB_WRITER = "dagster-blob"
# Where Dagster workers write inside a session: {session}/dagster/...
DAGSTER_DIR = "dagster"
MESSAGES_FILE = "messages.jsonl"
CHUNKS_DIR = "messages"
# Dagster's blob stores, by bus URL scheme: their writers take {"bucket", "key_prefix"}.
BLOB_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
# One environment variable holds at most 128 KiB on Linux (MAX_ARG_STRLEN).
INLINE_CONTEXT_LIMIT = 96 * 1024


# --- bootstrap parameters -------------------------------------------------------------------


def encode_param(value: Any) -> str:
    """``base64(zlib(json(value)))``: Dagster's encoding of its two bootstrap variables."""
    return base64.b64encode(zlib.compress(json.dumps(value).encode("utf-8"))).decode("ascii")


def decode_param(text: str) -> Any:
    """The inverse of :func:`encode_param`."""
    return json.loads(zlib.decompress(base64.b64decode(text)).decode("utf-8"))


def context_data(context: Context) -> dict[str, Any]:
    """A pipes_bus context in the shape of Dagster's ``PipesContextData``.

    No asset keys means "not an asset step" (``None``), as Dagster has it; a partition key
    without a range gets the one-key range Dagster always sends with a partition key.
    """
    keys = list(context.asset_keys) or None
    key_range: dict[str, str] | None = None
    if context.partition_key_range is not None:
        key_range = {
            "start": context.partition_key_range.start,
            "end": context.partition_key_range.end,
        }
    elif context.partition_key is not None:
        key_range = {"start": context.partition_key, "end": context.partition_key}
    window = context.partition_time_window
    return {
        "asset_keys": keys,
        "code_version_by_asset_key": (
            {k: context.code_versions.get(k) for k in keys} if keys else None
        ),
        "provenance_by_asset_key": ({k: context.provenance.get(k) for k in keys} if keys else None),
        "partition_key": context.partition_key,
        "partition_key_range": key_range,
        "partition_time_window": (
            {"start": window.start, "end": window.end} if window is not None else None
        ),
        "run_id": context.run_id,
        "job_name": context.job_name,
        "retry_number": context.retry_number,
        "extras": dict(context.extras),
    }


# --- Dagster -> pipes_bus -------------------------------------------------------------------


def _finite(value: Any) -> MetadataValue:
    # JSON cannot carry NaN or infinities; Dagster's writer sends them anyway (json.dumps).
    if isinstance(value, float) and not math.isfinite(value):
        return TextValue(repr(value))
    return metadata_value(value)


def _one_metadata(entry: Any) -> MetadataValue:
    if not (isinstance(entry, dict) and "raw_value" in entry and "type" in entry):
        return _finite(entry)  # a raw value, as a writer may send
    raw, kind = entry["raw_value"], entry["type"]
    if kind in ("text", "dagster_run", "asset"):
        return TextValue(str(raw))
    if kind == "url":
        return UrlValue(str(raw))
    if kind in ("path", "notebook"):
        return PathValue(str(raw))
    if kind == "md":
        return MarkdownValue(str(raw))
    if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
        return IntValue(raw)
    if kind == "float" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return FloatValue(float(raw)) if math.isfinite(raw) else TextValue(repr(float(raw)))
    if kind == "bool" and isinstance(raw, bool):
        return BoolValue(raw)
    if kind == "timestamp" and isinstance(raw, int | float) and not isinstance(raw, bool):
        return TimestampValue(float(raw))
    if kind == "table" and isinstance(raw, dict) and isinstance(raw.get("records"), list):
        schema = raw.get("schema")
        columns = (
            [
                TableColumn(
                    name=str(c["name"]),
                    type=str(c.get("type", "string")),
                    description=c.get("description"),
                )
                for c in schema
            ]
            if isinstance(schema, list)
            else None
        )
        return TableValue(records=list(raw["records"]), columns=columns)
    if kind in ("json", "null", "table_schema", "table_column_lineage"):
        return JsonValue(raw)
    # "__infer__", and any type this reader does not know: infer from the value.
    return _finite(raw)


def metadata_from_dagster(metadata: Any) -> dict[str, MetadataValue]:
    """Dagster's ``{name: {"raw_value", "type"}}`` metadata as typed pipes_bus values."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be an object, not {type(metadata).__name__}")
    return {str(k): _one_metadata(v) for k, v in metadata.items()}


def exception_from_dagster(exc: Any, _depth: int = 0) -> ExceptionInfo:
    """Dagster's structured exception (message, stack, name, cause, context) as ExceptionInfo.

    Dagster's ``message`` is ``format_exception_only()`` ("ValueError: boom\\n"); the type
    prefix and the newline are taken off so that ``message`` is ``str(exc)``, as ours is.
    """
    if not isinstance(exc, dict):
        return ExceptionInfo(type="Exception", message=str(exc))
    name = exc.get("name") or "Exception"
    text = str(exc.get("message") or "").rstrip("\n")
    head, sep, rest = text.partition(": ")
    if head.rsplit(".", 1)[-1] == str(name).rsplit(".", 1)[-1]:
        text = rest if sep else ""
    stack = exc.get("stack") or []
    nested = _depth < 16
    return ExceptionInfo(
        type=str(name),
        message=text,
        stack=[str(s) for s in stack] if isinstance(stack, list) else [str(stack)],
        cause=exception_from_dagster(exc["cause"], _depth + 1)
        if nested and exc.get("cause")
        else None,
        context=exception_from_dagster(exc["context"], _depth + 1)
        if nested and exc.get("context")
        else None,
    )


def _str(params: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string, not {type(value).__name__}")
    return value


def message_from_dagster(
    data: Mapping[str, Any],
    *,
    writer: str,
    count: int = 0,
    info: WriterInfo | None = None,
    at: float = 0.0,
) -> Message | UnknownMessage:
    """One Dagster Pipes message as a pipes_bus message.

    ``writer`` names the stream (it goes into ``Opened.info`` unless ``info`` is given),
    ``count`` is how many messages came before this one (for ``Closed.count``) and ``at`` is
    when it was reported (Dagster messages carry no time; 0 means unknown). A method this
    module does not know, or a known one with unusable params, becomes an UnknownMessage
    that keeps the whole message and says why.
    """
    method = data.get("method")
    raw = data.get("params")
    params: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    try:
        if method == "report_custom_message":
            return Custom(time=at, payload=params.get("payload"))
        if method == "log":
            level = params.get("level") or "info"
            return Log(
                time=at,
                message=str(params.get("message", "")),
                level=str(level).lower(),
                logger="dagster-pipes",
            )
        if method == "report_asset_materialization":
            return Materialization(
                time=at,
                asset_key=_str(params, "asset_key"),
                data_version=_str(params, "data_version", optional=True),
                metadata=metadata_from_dagster(params.get("metadata")),
            )
        if method == "report_asset_check":
            severity = str(params.get("severity") or "ERROR").upper()
            if severity not in ("WARN", "ERROR"):
                raise ValueError(f"`severity` must be WARN or ERROR, not {severity!r}")
            passed = params.get("passed")
            if not isinstance(passed, bool):
                raise TypeError(f"`passed` must be a boolean, not {type(passed).__name__}")
            return Check(
                time=at,
                asset_key=_str(params, "asset_key"),
                check_name=_str(params, "check_name"),
                passed=passed,
                severity="warn" if severity == "WARN" else "error",
                metadata=metadata_from_dagster(params.get("metadata")),
            )
        if method == "log_external_stream":
            stream = params.get("stream")
            if stream not in ("stdout", "stderr"):
                raise ValueError(f"`stream` must be stdout or stderr, not {stream!r}")
            return Output(time=at, stream=stream, text=str(params.get("text", "")))
        if method == "opened":
            extras = params.get("extras")
            return Opened(
                time=at,
                info=info or WriterInfo(id=writer, library="dagster-pipes"),
                extras=dict(extras) if isinstance(extras, dict) else {},
            )
        if method == "closed":
            exc = params.get("exception")
            return Closed(
                time=at,
                count=count,
                exception=exception_from_dagster(exc) if exc else None,
            )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return UnknownMessage(
            kind=str(method), data=dict(data), reason=f"unusable Dagster params: {exc}"
        )
    return UnknownMessage(
        kind=str(method), data=dict(data), reason="not a Dagster Pipes method this reader knows"
    )


# --- pipes_bus -> Dagster -------------------------------------------------------------------


def _metadata_entry(value: MetadataValue) -> dict[str, Any]:
    kind = type(value)
    if kind is TableValue:
        table: TableValue = value  # type: ignore[assignment]
        columns = table.columns
        if columns is None:
            names: dict[str, None] = {}
            for record in table.records:
                names.update(dict.fromkeys(record))
            columns = [TableColumn(name=n) for n in names]
        schema = [{"name": c.name, "type": c.type, "description": c.description} for c in columns]
        return {"raw_value": {"records": table.records, "schema": schema}, "type": "table"}
    raw = value.value  # type: ignore[union-attr]
    if kind is JsonValue:
        if raw is None:
            return {"raw_value": None, "type": "null"}
        return {"raw_value": raw, "type": "json" if isinstance(raw, dict | list) else "__infer__"}
    tag = kind.__struct_config__.tag
    return {"raw_value": raw, "type": tag}


def dagster_metadata(metadata: Mapping[str, MetadataValue]) -> dict[str, dict[str, Any]]:
    """Typed pipes_bus metadata as Dagster's ``{name: {"raw_value", "type"}}``."""
    return {name: _metadata_entry(value) for name, value in metadata.items()}


def exception_to_dagster(info: ExceptionInfo) -> dict[str, Any]:
    """An ExceptionInfo as Dagster's structured exception (every key present)."""
    return {
        "message": f"{info.type}: {info.message}" if info.message else info.type,
        "stack": list(info.stack),
        "name": info.type.rsplit(".", 1)[-1],
        "cause": exception_to_dagster(info.cause) if info.cause else None,
        "context": exception_to_dagster(info.context) if info.context else None,
    }


_LEVELS = {
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
    "fatal": "critical",
}


def _envelope(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    return {VERSION_FIELD: PIPES_PROTOCOL_VERSION, "method": method, "params": params}


def message_to_dagster(message: Message | UnknownMessage) -> dict[str, Any] | None:
    """A pipes_bus message as a Dagster Pipes message, or None if Dagster has no equivalent.

    ``opened`` and ``closed`` are translated one for one; an orchestrator that presents
    several writers as one Dagster process decides itself which of them to pass on.
    Progress and unknown messages become ``log`` lines.
    """
    kind = type(message)
    if kind is Custom:
        return _envelope("report_custom_message", {"payload": message.payload})  # type: ignore[union-attr]
    if kind is Materialization:
        m: Materialization = message  # type: ignore[assignment]
        return _envelope(
            "report_asset_materialization",
            {
                "asset_key": m.asset_key,
                "data_version": m.data_version,
                "metadata": dagster_metadata(m.metadata),
            },
        )
    if kind is Check:
        c: Check = message  # type: ignore[assignment]
        return _envelope(
            "report_asset_check",
            {
                "asset_key": c.asset_key,
                "check_name": c.check_name,
                "passed": c.passed,
                "severity": "WARN" if c.severity == "warn" else "ERROR",
                "metadata": dagster_metadata(c.metadata),
            },
        )
    if kind is Log:
        log: Log = message  # type: ignore[assignment]
        return _envelope(
            "log", {"message": log.message, "level": _LEVELS.get(log.level.lower(), "info")}
        )
    if kind is Output:
        out: Output = message  # type: ignore[assignment]
        return _envelope(
            "log_external_stream", {"stream": out.stream, "text": out.text, "extras": {}}
        )
    if kind is Progress:
        p: Progress = message  # type: ignore[assignment]
        total = f"/{p.total:g}" if p.total is not None else ""
        text = f"progress{f' {p.label}' if p.label else ''}: {p.current:g}{total}"
        return _envelope(
            "log", {"message": text + (f" {p.unit}" if p.unit else ""), "level": "debug"}
        )
    if kind is Opened:
        return _envelope("opened", {"extras": dict(message.extras)})  # type: ignore[union-attr]
    if kind is Closed:
        exc = message.exception  # type: ignore[union-attr]
        return _envelope("closed", {"exception": exception_to_dagster(exc)} if exc else {})
    if kind is UnknownMessage:
        u: UnknownMessage = message  # type: ignore[assignment]
        return _envelope(
            "log",
            {"message": f"unknown message kind {u.kind!r}: {u.reason}", "level": "warning"},
        )
    return None


# --- reading what Dagster workers write ------------------------------------------------------

_decoder = msgspec.json.Decoder()
_CHUNK_NAME = re.compile(r"([0-9]+)\.json")


def _decode_line(line: bytes) -> Any:
    if json_too_deep(line):
        raise ValueError(f"nested deeper than {MAX_NESTING} levels of arrays and objects")
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError:
        # Python's json.dumps writes NaN and Infinity, which strict JSON parsers refuse.
        return json.loads(line)


class _Stream:
    """One Dagster writer as a pipes_bus writer stream: translation, seq, open/closed."""

    def __init__(self, writer: str, skip: int = 0, *, trusted: bool = True) -> None:
        self.writer = writer
        self.trusted = trusted  # False in a signed session: nothing here is authenticated
        self.seq = 0
        self.skip = skip  # messages already delivered before a restart (from a cursor)
        self.opened = 0
        self.closed = 0

    @property
    def seen(self) -> bool:
        return self.trusted and self.seq > 0

    @property
    def open(self) -> bool:
        # A stream whose `opened` line was lost still counts as open until it closes.
        return self.seen and max(self.opened, 1) > self.closed

    def lines(
        self, lines: list[bytes], where: str, first_line: int, chunk: int, out: list[Any]
    ) -> None:
        number = first_line
        for line in lines:
            number += 1
            if not line.strip():
                continue
            if not self.trusted:
                self.seq += 1
                out.append(
                    StreamFault(
                        self.writer,
                        f"{where}:{number}",
                        "unauthenticated",
                        f"line {number} is not delivered: the session is signed, and Dagster "
                        "Pipes messages carry no signature",
                        (self.seq - 1, self.seq - 1),
                    )
                )
                continue
            try:
                data = _decode_line(line)
            except (ValueError, RecursionError) as exc:
                out.append(self._fault(where, number, f"not JSON ({exc})"))
                continue
            if not isinstance(data, dict) or not isinstance(data.get("method"), str):
                out.append(self._fault(where, number, "not a Dagster Pipes message (no method)"))
                continue
            message = message_from_dagster(data, writer=self.writer, count=self.seq)
            kind = type(message)
            if kind is Opened:
                self.opened += 1
            elif kind is Closed:
                self.closed += 1
            seq = self.seq
            self.seq = seq + 1
            if seq >= self.skip:
                out.append(Event(self.writer, seq, chunk, message))

    def _fault(self, where: str, line: int, detail: str) -> StreamFault:
        return StreamFault(self.writer, f"{where}:{line}", "corrupt", f"line {line} is {detail}")


class _FileReader:
    """Follows the default writer's JSON Lines file; consumes complete lines only.

    The file is opened without following a symbolic link and without blocking, and must be
    a regular file; a line longer than ``max_line`` bytes is reported and skipped, so
    memory stays bounded whatever is written there.
    """

    def __init__(
        self,
        path: str,
        stream: _Stream,
        *,
        max_read: int,
        tail_timeout: float,
        clock: Callable[[], float],
        max_line: int = 8 * MiB,
    ) -> None:
        self.path = path
        self.stream = stream
        self.offset = 0  # bytes read from the file so far
        self.tail = b""  # the start of a line whose end has not been written yet
        self.line = 0  # complete lines consumed
        self.max_read = max_read
        self.max_line = max_line
        self.tail_timeout = tail_timeout
        self._clock = clock
        self._tail_since = 0.0
        self._skipping = False  # inside a line over max_line, already reported
        self._refused = False  # not a regular file: reported once, never read
        self.last_error: Exception | None = None

    def _read(self, out: list[Any]) -> bytes | None:
        """The next bytes of the file, b"" at its end, or None to stop this poll."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse(out, "a symbolic link")
            else:
                self.last_error = exc
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._refuse(out, "not a regular file")
                return None
            if info.st_size < self.offset:
                out.append(
                    StreamFault(
                        self.stream.writer,
                        self.path,
                        "corrupt",
                        f"the file shrank from {self.offset} to {info.st_size} bytes; "
                        "reading goes on from its new end",
                    )
                )
                self.offset, self.tail, self._skipping = info.st_size, b"", False
                return None
            if info.st_size == self.offset:
                return b""
            os.lseek(fd, self.offset, os.SEEK_SET)
            return os.read(fd, min(info.st_size - self.offset, self.max_read))
        except OSError as exc:
            self.last_error = exc
            return None
        finally:
            os.close(fd)

    def _refuse(self, out: list[Any], what: str) -> None:
        self._refused = True
        out.append(
            StreamFault(
                self.stream.writer,
                self.path,
                "foreign",
                f"the Dagster Pipes messages file is {what}; it is not read",
            )
        )

    def poll(self, out: list[Any], final: bool) -> None:
        while not self._refused:
            data = self._read(out)
            if not data:
                break
            self.offset += len(data)
            self._tail_since = self._clock()
            self._consume(data, out)
            if len(data) < self.max_read:
                break
        if self.tail and final:
            stale = self._clock() - self._tail_since >= self.tail_timeout
            if stale or not self.stream.open:
                # Nobody is finishing this line: deliver it if it is whole, else report it.
                tail, self.tail = self.tail, b""
                before = len(out)
                self.stream.lines([tail], self.path, self.line, 0, out)
                self.line += 1
                if len(out) > before and isinstance(out[-1], StreamFault):
                    out[-1] = StreamFault(
                        self.stream.writer,
                        f"{self.path}:{self.line}",
                        "truncated",
                        f"line {self.line} was never finished ({len(tail)} bytes, no newline)",
                    )

    def _consume(self, data: bytes, out: list[Any]) -> None:
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._skipping = False
            self.line += 1
            data = data[newline + 1 :]
        end = data.rfind(b"\n") + 1
        if end:
            complete = self.tail + data[: end - 1] if self.tail else data[: end - 1]
            lines = complete.split(b"\n")
            self.stream.lines(lines, self.path, self.line, 0, out)
            self.line += len(lines)
            self.tail = data[end:]
        else:
            self.tail += data
        if len(self.tail) > self.max_line:
            out.append(
                StreamFault(
                    self.stream.writer,
                    f"{self.path}:{self.line + 1}",
                    "too_large",
                    f"line {self.line + 1} is longer than {self.max_line} bytes; it is skipped",
                )
            )
            self.tail = b""
            self._skipping = True


class _ChunkReader:
    """Follows a blob-store writer's ``{prefix}/{n}.json`` chunks (n = 1, 2, ...)."""

    def __init__(
        self,
        transport: Transport,
        prefix: str,
        stream: _Stream,
        *,
        max_chunk_bytes: int,
        probe_interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.transport = transport
        self.prefix = prefix
        self.stream = stream
        self.next = 1
        self.max_chunk_bytes = max_chunk_bytes
        self.probe_interval = probe_interval
        # Backs off while nothing comes (Dagster's writers upload every ~11 s at best), so
        # an idle session's probes here cost at most one request per 30 s.
        self.interval = probe_interval
        self.max_interval = max(probe_interval, 30.0)
        self._clock = clock
        self._probed_at: float | None = None
        self.last_error: Exception | None = None

    def key(self, n: int) -> str:
        return f"{self.prefix}/{n}.json"

    @property
    def due(self) -> float:
        """When the next probe for a chunk is due (clock time)."""
        if self._probed_at is None:
            return self._clock()
        return self._probed_at + self.interval

    def poll(self, out: list[Any], final: bool) -> None:
        now = self._clock()
        if not final and self._probed_at is not None and now - self._probed_at < self.interval:
            return
        self._probed_at = now
        before = self.next
        try:
            self._read(out, final)
        finally:
            found = self.next != before
            self.interval = (
                self.probe_interval if found else min(self.max_interval, self.interval * 1.5)
            )

    def _read(self, out: list[Any], final: bool) -> None:
        while True:
            key = self.key(self.next)
            try:
                data = self.transport.get(key, max_size=self.max_chunk_bytes)
            except ObjectTooLargeError as exc:
                out.append(
                    StreamFault(self.stream.writer, key, "too_large", f"{exc}; it was skipped")
                )
                self.next += 1
                continue
            except StoreError as exc:
                self.last_error = exc
                return
            if data is None:
                if final and self._skip_gap(out):
                    continue
                return
            self.stream.lines(data.split(b"\n"), key, 0, self.next, out)
            self.next += 1

    def _skip_gap(self, out: list[Any]) -> bool:
        # Only after the work ended: a LIST costs more than a GET, and chunks are numbered.
        try:
            names = self.transport.list(self.prefix)
        except StoreError as exc:
            self.last_error = exc
            return False
        later = sorted(
            n
            for n in (int(m.group(1)) for m in map(_CHUNK_NAME.fullmatch, names) if m)
            if n > self.next
        )
        if not later:
            return False
        out.append(
            StreamFault(
                self.stream.writer,
                self.key(self.next),
                "gap",
                f"chunks {self.next} to {later[0] - 1} are missing; reading goes on at "
                f"{self.key(later[0])}",
            )
        )
        self.next = later[0]
        return True


def _blob_location(url: str) -> tuple[str, str] | None:
    """(bucket, key prefix) of a blob-store bus URL, or None if it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in BLOB_SCHEMES or "::" in url:
        return None
    bucket, _, prefix = rest.partition("/")
    bucket = bucket.split("@", 1)[0]  # abfs://container@account.dfs.core.windows.net/...
    if not bucket:
        return None
    return bucket, prefix.strip("/")


def _local_root(transport: Transport) -> str | None:
    from pipes_bus.transports._file import FileTransport

    return transport.root if isinstance(transport, FileTransport) else None


class DagsterPipesSource(MessageSource):
    """Hears unmodified Dagster Pipes workers in a pipes_bus session.

    Create it with :func:`dagster_source`. ``env()`` holds ``DAGSTER_PIPES_CONTEXT``
    (the session's context inline, as ``{"data": ...}``) and ``DAGSTER_PIPES_MESSAGES``
    (``{"path"}``, plus ``{"bucket", "key_prefix"}`` on a blob-store bus: each Dagster
    writer takes the keys it knows). ``poll()`` reads both places.
    """

    def __init__(
        self,
        transport: Transport,
        session: str,
        *,
        context: Context | None = None,
        inject: bool = True,
        include_stdio: bool = False,
        cursor: SessionCursor | None = None,
        read_chunks: bool | None = None,
        trusted: bool = True,
        probe_interval: float = 1.0,
        poll_interval: tuple[float, float] = (0.005, 0.1),
        tail_timeout: float = 1.0,
        max_read: int = 16 * MiB,
        max_chunk_bytes: int = 64 * MiB,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self._clock = clock
        self._fastest, self._slowest = poll_interval
        self._interval = self._fastest
        self._due = clock()
        self.session = session
        self.context = context or Context(run_id=session)
        self.include_stdio = include_stdio
        self._env: dict[str, str] | None = None
        self._tempdir: str | None = None
        self._dir = f"{session}/{DAGSTER_DIR}"
        skips = {w: c.seq for w, c in (cursor.streams.items() if cursor else ())}
        self._file_stream = _Stream(FILE_WRITER, skips.get(FILE_WRITER, 0), trusted=trusted)
        self._blob_stream = _Stream(BLOB_WRITER, skips.get(BLOB_WRITER, 0), trusted=trusted)
        # A signed session hands Dagster workers no variables: they could only report
        # unauthenticated, and what appears anyway is reported, never delivered.
        inject = inject and trusted
        root = _local_root(transport)
        if root is not None:
            path: str | None = os.path.join(root, session, DAGSTER_DIR, MESSAGES_FILE)
        elif inject:
            # Created by env(), only when the variables are really handed out.
            self._tempdir = os.path.join(
                tempfile.gettempdir(), f"pipes-bus-dagster-{session}-{secrets.token_hex(4)}"
            )
            path = os.path.join(self._tempdir, MESSAGES_FILE)
        else:
            path = None
        self.path = path
        self._file = (
            _FileReader(
                path,
                self._file_stream,
                max_read=max_read,
                tail_timeout=tail_timeout,
                clock=clock,
            )
            if path is not None
            else None
        )
        self._blob = _blob_location(transport.url)
        # Chunks are only where blob-store writers are told to write: not worth a GET a
        # second on other buses unless asked for.
        self._read_chunks = self._blob is not None if read_chunks is None else read_chunks
        self._chunks = _ChunkReader(
            transport,
            f"{self._dir}/{CHUNKS_DIR}",
            self._blob_stream,
            max_chunk_bytes=max_chunk_bytes,
            probe_interval=probe_interval,
            clock=clock,
        )
        self._inject = inject

    # --- what the worker is told ---------------------------------------------------------

    def message_params(self) -> dict[str, Any]:
        """The ``DAGSTER_PIPES_MESSAGES`` params: where each kind of Dagster writer writes."""
        params: dict[str, Any] = {}
        if self.path is not None:
            params["path"] = self.path
            if self.include_stdio:
                params["include_stdio_in_messages"] = True
        if self._blob is not None:
            bucket, prefix = self._blob
            params["bucket"] = bucket
            params["key_prefix"] = "/".join(p for p in (prefix, self._dir, CHUNKS_DIR) if p)
        return params

    def context_params(self) -> dict[str, Any]:
        """The ``DAGSTER_PIPES_CONTEXT`` params: the context inline, or a file if too large."""
        data = context_data(self.context)
        if len(encode_param({"data": data})) <= INLINE_CONTEXT_LIMIT:
            return {"data": data}
        root = _local_root(self.transport)
        key = f"{self._dir}/context.json"
        body = json.dumps(data).encode("utf-8")
        if not self.transport.put_if_absent(key, body) and self.transport.get(key) != body:
            raise ConfigurationError(
                f"{self.transport.describe(key)} already holds another Dagster context."
            )
        if root is not None:
            return {"path": os.path.join(root, *key.split("/"))}
        if self._blob is not None:
            bucket, prefix = self._blob
            return {"bucket": bucket, "key": "/".join(p for p in (prefix, key) if p)}
        raise ConfigurationError(
            f"The context is too large for {CONTEXT_ENV} and {self.transport.url} is neither "
            "a local directory nor a blob store a Dagster context loader can read."
        )

    def env(self) -> dict[str, str]:
        if not self._inject:
            return {}
        if self._env is None:
            if self.path is not None:
                os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self._env = {
                CONTEXT_ENV: encode_param(self.context_params()),
                MESSAGES_ENV: encode_param(self.message_params()),
            }
        return dict(self._env)

    # --- what the worker wrote -----------------------------------------------------------

    def poll(self, *, final: bool = False) -> list[Event | StreamFault]:
        out: list[Event | StreamFault] = []
        if self._file is not None:
            self._file.poll(out, final)
        if self._read_chunks:
            self._chunks.poll(out, final)
        # Fast while messages flow, backing off to `slowest` (a local stat) when idle.
        self._interval = self._fastest if out else min(self._slowest, self._interval * 1.5)
        self._due = self._clock() + self._interval
        return out

    def wait_time(self) -> float:
        """Seconds until this source would like to be polled again (0 if now)."""
        due = self._due if self._file is not None else self._clock() + self._slowest
        if self._read_chunks:
            due = min(due, self._chunks.due)
        return max(0.0, due - self._clock())

    def _streams(self) -> list[_Stream]:
        return [s for s in (self._file_stream, self._blob_stream) if s.seen]

    @property
    def writers(self) -> list[str]:
        return [s.writer for s in self._streams()]

    @property
    def open_writers(self) -> list[str]:
        return [s.writer for s in self._streams() if s.open]

    @property
    def last_error(self) -> Exception | None:
        """The last error met reading (it is retried on the next poll)."""
        return (self._file.last_error if self._file else None) or self._chunks.last_error

    def describe(self) -> str:
        """Where this source looks, for diagnostics."""
        places = []
        if self.path is not None:
            places.append(f"file {self.path}")
        if self._read_chunks:
            places.append(f"chunks {self.transport.describe(self._chunks.prefix)}/{{n}}.json")
        return "Dagster Pipes workers: " + ", ".join(places)

    def close(self) -> None:
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None


def dagster_source(
    transport: Transport,
    session: str,
    *,
    context: Context | None = None,
    inject: bool = True,
    include_stdio: bool = False,
    cursor: SessionCursor | None = None,
    **options: Any,
) -> DagsterPipesSource:
    """The Dagster Pipes source for ``session`` on ``transport``.

    ``context`` is injected in Dagster's shape; ``include_stdio`` asks Dagster's default
    writer to carry the worker's stdout/stderr (``log_external_stream``); ``inject=False``
    only reads (to follow a session from elsewhere), and ``cursor`` skips what a previous
    follower already delivered. Other options: ``read_chunks`` (follow
    ``{session}/dagster/messages/{n}.json``; default: only on S3, GCS and Azure buses, where
    blob-store writers are told to write), ``probe_interval`` (seconds between probes for the
    next chunk while the work runs), ``tail_timeout``, ``max_read``,
    ``max_chunk_bytes``, ``poll_interval`` ((fastest, slowest) seconds between looks at the
    file, for :meth:`DagsterPipesSource.wait_time`), ``clock``.
    """
    return DagsterPipesSource(
        transport,
        session,
        context=context,
        inject=inject,
        include_stdio=include_stdio,
        cursor=cursor,
        **options,
    )


def ensure_dagster_source(session: Session, *, include_stdio: bool = False) -> DagsterPipesSource:
    """The session's Dagster Pipes source, added (with its variables in ``session.env``) if
    it has none. Two sources reading one place would deliver everything twice.
    """
    for source in session.sources:
        if isinstance(source, DagsterPipesSource):
            source.include_stdio = source.include_stdio or include_stdio
            return source
    source = dagster_source(
        session.transport, session.id, context=session.context, include_stdio=include_stdio
    )
    session.env.update(source.env())
    session.sources.append(source)
    return source
