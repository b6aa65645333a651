"""Dagster Pipes' wire, translated to and from pipes_bus's, without importing dagster.

Dagster Pipes messages (``{"__dagster_pipes_version": "0.1", "method": ..., "params":
...}``) become pipes_bus messages and back, and a pipes_bus context takes the shape Dagster's
``PipesContextData`` expects. The source that reads Dagster workers is in
:mod:`pipes_bus.integrations.dagster._source`; the Dagster-side classes are in
:mod:`pipes_bus.integrations.dagster`.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

from pipes_bus._wire.bootstrap import Context
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

__all__ = [
    "CONTEXT_ENV",
    "MESSAGES_ENV",
    "PIPES_PROTOCOL_VERSION",
    "context_data",
    "dagster_metadata",
    "decode_param",
    "encode_param",
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
