"""pipes_bus: run work anywhere and hear back from it through shared storage.

This module is the worker's import and stays light: it loads no orchestrator code,
no CLI extras and no cloud SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._chunk import ChunkHeader
from ._context import Context, PartitionKeyRange, PartitionTimeWindow, register_context_loader
from ._errors import (
    BufferFullError,
    ConfigurationError,
    DeliveryError,
    EncodeError,
    MessageTooLargeError,
    NotInSessionError,
    ObjectTooLargeError,
    PermanentStoreError,
    PipesBusError,
    PipesBusWarning,
    StoreError,
    TransientStoreError,
    UnknownSchemeError,
    UnreadableObjectError,
    WriterClosedError,
)
from ._reader import Event, SessionCursor, SessionReader, StreamCursor, StreamFault
from ._retry import PollSchedule, RetryPolicy
from ._schema import (
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
from ._version import __version__
from ._worker import Worker, WorkerTerminated, open_worker
from ._writer import ChunkWriter, WriterSettings
from .transports import Capabilities, Transport, open_transport, register_transport

__all__ = [
    "PROTOCOL_VERSION",
    "AnyMessage",
    "BoolValue",
    "BufferFullError",
    "Capabilities",
    "Check",
    "ChunkHeader",
    "ChunkWriter",
    "Closed",
    "ConfigurationError",
    "Context",
    "Custom",
    "DeliveryError",
    "EncodeError",
    "Event",
    "ExceptionInfo",
    "FloatValue",
    "IntValue",
    "JsonValue",
    "Log",
    "MarkdownValue",
    "Materialization",
    "Message",
    "MessageTooLargeError",
    "MetadataValue",
    "NotInSessionError",
    "ObjectTooLargeError",
    "Opened",
    "Output",
    "PartitionKeyRange",
    "PartitionTimeWindow",
    "PathValue",
    "PermanentStoreError",
    "PipesBusError",
    "PipesBusWarning",
    "PollSchedule",
    "Progress",
    "RetryPolicy",
    "Session",
    "SessionCursor",
    "SessionReader",
    "SessionResult",
    "StoreError",
    "StreamCursor",
    "StreamFault",
    "TableColumn",
    "TableValue",
    "TextValue",
    "TimestampValue",
    "TransientStoreError",
    "Transport",
    "UnknownMessage",
    "UnknownSchemeError",
    "UnreadableObjectError",
    "UrlValue",
    "Worker",
    "WorkerTerminated",
    "WriterClosedError",
    "WriterInfo",
    "WriterSettings",
    "__version__",
    "metadata_value",
    "open_session",
    "open_transport",
    "open_worker",
    "register_context_loader",
    "register_transport",
    "run_subprocess",
]

# Public errors report themselves as pipes_bus.X (in tracebacks and `closed` messages).
# (Structs keep their module: msgspec resolves their annotations through it.)
for _name in __all__:
    _value = globals().get(_name)
    if isinstance(_value, type) and issubclass(_value, BaseException | Warning):
        _value.__module__ = "pipes_bus"
del _name, _value

if TYPE_CHECKING:
    from .orchestrator import Session, SessionResult, open_session, run_subprocess

_ORCHESTRATOR = frozenset({"Session", "SessionResult", "open_session", "run_subprocess"})


def __getattr__(name: str) -> Any:
    # The orchestrator side loads only when asked for, so workers stay light.
    if name in _ORCHESTRATOR:
        from . import orchestrator

        return getattr(orchestrator, name)
    raise AttributeError(f"module 'pipes_bus' has no attribute {name!r}")
