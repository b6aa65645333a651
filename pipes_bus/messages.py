"""The wire schema: the messages a worker reports, the typed metadata they carry, and the
control objects beside them (a session's manifest and end, cancel requests, beats).

Orchestrators meet messages as ``event.message``; custom runtimes write them with
:class:`pipes_bus.log.ChunkWriter`. ``docs/protocol.md`` specifies their encoding.
"""

from __future__ import annotations

from pipes_bus._wire.control import Beat, CancelRequest, Manifest, SessionEnd
from pipes_bus._wire.limits import MAX_NESTING
from pipes_bus._wire.schema import (
    PROTOCOL_VERSION,
    AnyMessage,
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
    "MAX_NESTING",
    "PROTOCOL_VERSION",
    "AnyMessage",
    "Beat",
    "BoolValue",
    "CancelRequest",
    "Check",
    "Closed",
    "Custom",
    "ExceptionInfo",
    "FloatValue",
    "IntValue",
    "JsonValue",
    "Log",
    "Manifest",
    "MarkdownValue",
    "Materialization",
    "Message",
    "MetadataValue",
    "Opened",
    "Output",
    "PathValue",
    "Progress",
    "SessionEnd",
    "TableColumn",
    "TableValue",
    "TextValue",
    "TimestampValue",
    "UnknownMessage",
    "UrlValue",
    "WriterInfo",
    "metadata_value",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
