"""The wire schema: messages a worker reports, and the typed metadata they carry.

Evolution rules (msgspec's, which fit a wire protocol exactly):

- a new field always has a default;
- a field never changes type;
- unknown fields and unknown message kinds are never an error for a reader:
  they reach the reader's user as :class:`UnknownMessage` or ``Event.unknown_fields``.

``PROTOCOL_VERSION`` is "MAJOR.MINOR" and moves independently of the package version.
A reader accepts every chunk of its own major version; a newer minor only adds kinds and
fields. A newer major version is reported, not guessed at.
"""

import datetime as _dt
import math
import os
from typing import Any, Literal, Union

import msgspec

__all__ = [
    "PROTOCOL_VERSION",
    "AnyMessage",
    "BoolValue",
    "Check",
    "Closed",
    "Custom",
    "ExceptionInfo",
    "FloatValue",
    "IntValue",
    "JsonValue",
    "Log",
    "MarkdownValue",
    "Materialization",
    "Message",
    "MetadataValue",
    "Opened",
    "Output",
    "PathValue",
    "Progress",
    "TableColumn",
    "TableValue",
    "TextValue",
    "TimestampValue",
    "UnknownMessage",
    "UrlValue",
    "WriterInfo",
    "metadata_value",
]

PROTOCOL_VERSION = "1.1"
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1


# --- metadata ----------------------------------------------------------------------------


class _Metadata(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True, gc=False):
    """Base of typed metadata values; encoded as ``{"type": ..., "value": ...}``."""


class TextValue(_Metadata, tag="text", frozen=True):
    """Plain text."""

    value: str


class IntValue(_Metadata, tag="int", frozen=True):
    """An integer."""

    value: int


class FloatValue(_Metadata, tag="float", frozen=True):
    """A finite float (JSON cannot carry NaN or infinities)."""

    value: float


class BoolValue(_Metadata, tag="bool", frozen=True):
    """A boolean."""

    value: bool


class JsonValue(_Metadata, tag="json", frozen=True):
    """Any JSON-compatible structure."""

    value: Any


class UrlValue(_Metadata, tag="url", frozen=True):
    """A URL."""

    value: str


class PathValue(_Metadata, tag="path", frozen=True):
    """A filesystem or object-store path."""

    value: str


class MarkdownValue(_Metadata, tag="md", frozen=True):
    """Markdown text."""

    value: str


class TimestampValue(_Metadata, tag="timestamp", frozen=True):
    """A point in time, in seconds since the Unix epoch (UTC)."""

    value: float


class TableColumn(msgspec.Struct, frozen=True, omit_defaults=True):
    """One column of a :class:`TableValue`."""

    name: str
    type: str = "string"
    description: str | None = None


class TableValue(_Metadata, tag="table", frozen=True):
    """A small table: a list of records, optionally with a column schema."""

    records: list[dict[str, Any]]
    columns: list[TableColumn] | None = None


MetadataValue = Union[  # noqa: UP007 - msgspec needs a runtime Union object here
    TextValue,
    IntValue,
    FloatValue,
    BoolValue,
    JsonValue,
    UrlValue,
    PathValue,
    MarkdownValue,
    TimestampValue,
    TableValue,
]
_METADATA_TYPES = MetadataValue.__args__  # type: ignore[attr-defined]


def metadata_value(value: Any) -> MetadataValue:
    """Wrap a plain Python value in the matching typed metadata value.

    bool, int, float, str, datetime, os.PathLike, dict/list/tuple/None map to
    bool, int, float, text, timestamp, path and json; typed values pass through.
    """
    if isinstance(value, _METADATA_TYPES):
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool):
        return BoolValue(value)
    if isinstance(value, int):
        return IntValue(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            from pipes_bus._errors import EncodeError

            raise EncodeError(
                f"Metadata value {value!r} is not finite; JSON cannot carry it. "
                "Report it as text, e.g. TextValue(str(x))."
            )
        return FloatValue(value)
    if isinstance(value, str):
        return TextValue(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return TimestampValue(value.timestamp())
    if isinstance(value, os.PathLike):
        return PathValue(os.fspath(value))
    if value is None or isinstance(value, dict | list | tuple):
        return JsonValue(value)
    from pipes_bus._errors import EncodeError

    raise EncodeError(
        f"Cannot use {type(value).__name__} as a metadata value. Use a str, int, float, "
        "bool, datetime, path, dict or list, or one of the typed values (TextValue, ...)."
    )


# --- messages ----------------------------------------------------------------------------


class Message(
    msgspec.Struct, frozen=True, tag_field="kind", kw_only=True, omit_defaults=True, gc=False
):
    """Base of every message. ``time`` is when the worker reported it (epoch seconds).

    Messages are not tracked by the garbage collector (``gc=False``): they never form
    reference cycles, and a reader decoding millions of them would otherwise spend
    most of its time in collections.
    """

    time: float = 0.0


class WriterInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who is writing a stream."""

    id: str
    label: str | None = None
    pid: int | None = None
    host: str | None = None
    language: str = "python"
    library: str | None = None


class Opened(Message, tag="opened", frozen=True):
    """First message of every stream. (``info``, not ``writer``: event lines use that key.)

    ``heartbeat`` (protocol 1.1) is the most seconds the writer lets pass without a sign of
    life: a chunk, or a beat in the session's ``beats/`` (absent: it sends no beats, and
    cannot be told from a dead writer by silence alone).
    """

    info: WriterInfo
    extras: dict[str, Any] = {}
    heartbeat: float | None = None


class Log(Message, tag="log", frozen=True):
    """A log record."""

    message: str
    level: str = "info"
    logger: str | None = None
    fields: dict[str, Any] = {}


class Materialization(Message, tag="materialization", frozen=True):
    """An asset was materialized."""

    asset_key: str
    data_version: str | None = None
    metadata: dict[str, MetadataValue] = {}


class Check(Message, tag="check", frozen=True):
    """The result of a data-quality check on an asset."""

    asset_key: str
    check_name: str
    passed: bool
    severity: Literal["warn", "error"] = "error"
    metadata: dict[str, MetadataValue] = {}


class Progress(Message, tag="progress", frozen=True):
    """Progress of long work: ``current`` of ``total`` ``unit``."""

    current: float
    total: float | None = None
    unit: str | None = None
    label: str | None = None


class Custom(Message, tag="custom", frozen=True):
    """Any msgspec-encodable payload."""

    payload: Any = None


class Output(Message, tag="output", frozen=True):
    """Captured text from a worker's stdout or stderr."""

    stream: Literal["stdout", "stderr"]
    text: str


class ExceptionInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A structured exception, with its explicit cause and implicit context."""

    type: str
    message: str
    stack: list[str] = []
    cause: "ExceptionInfo | None" = None
    context: "ExceptionInfo | None" = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> "ExceptionInfo":
        """Capture an exception, its traceback and its cause chain, within the bounds of
        :meth:`bounded`."""
        return cls._capture(exc, 0).bounded()

    @classmethod
    def _capture(cls, exc: BaseException, depth: int) -> "ExceptionInfo":
        import traceback

        cause = context = None
        # One link more than bounded() keeps, so that it can say the chain was cut.
        if depth <= EXCEPTION_CHAIN_LIMIT:
            if exc.__cause__ is not None:
                cause = cls._capture(exc.__cause__, depth + 1)
            elif exc.__context__ is not None and not exc.__suppress_context__:
                context = cls._capture(exc.__context__, depth + 1)
        name = type(exc).__qualname__
        module = type(exc).__module__
        try:
            text = str(exc)
        except Exception as error:  # a __str__ that raises must not cost the stream its end
            text = f"<str() of the exception raised {type(error).__name__}>"
        return cls(
            type=name if module in (None, "builtins") else f"{module}.{name}",
            message=text,
            stack=traceback.format_tb(exc.__traceback__),
            cause=cause,
            context=context,
        )

    def bounded(self, _depth: int = 0) -> "ExceptionInfo":
        """This exception within the size a ``closed`` message may carry.

        The message keeps its first 16 KiB characters, the stack its first 10 and last 40
        entries of at most 2 KiB each, the chain the exception and 16 links below it;
        whatever is cut says so.
        """
        message = _clip(self.message, EXCEPTION_TEXT_LIMIT)
        stack = [_clip(line, EXCEPTION_FRAME_LIMIT) for line in self.stack]
        if len(stack) > EXCEPTION_FRAMES:
            omitted = len(stack) - EXCEPTION_FRAMES
            stack = [*stack[:10], f"... [{omitted} frames omitted]\n", *stack[-40:]]
        last = _depth >= EXCEPTION_CHAIN_LIMIT
        cause = self.cause.bounded(_depth + 1) if self.cause and not last else None
        context = self.context.bounded(_depth + 1) if self.context and not last else None
        if last and (self.cause or self.context):
            message += " [the rest of the exception chain was cut]"
        if (message, stack, cause, context) == (self.message, self.stack, self.cause, self.context):
            return self
        return ExceptionInfo(
            type=_clip(self.type, 1024), message=message, stack=stack, cause=cause, context=context
        )


EXCEPTION_TEXT_LIMIT = 16 * 1024
EXCEPTION_FRAME_LIMIT = 2048
EXCEPTION_FRAMES = 50
EXCEPTION_CHAIN_LIMIT = 16


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [truncated: {len(text)} characters in all]"


class Closed(Message, tag="closed", frozen=True):
    """Last message of every stream. ``count`` is how many messages came before it."""

    count: int = 0
    exception: ExceptionInfo | None = None


AnyMessage = Union[  # noqa: UP007 - msgspec needs a runtime Union object here
    Opened, Log, Materialization, Check, Progress, Custom, Output, Closed
]


class UnknownMessage(msgspec.Struct, frozen=True):
    """A message this reader does not understand (a newer kind, or a bad field).

    ``data`` holds the message exactly as decoded, ``kind`` included.
    """

    kind: str
    data: dict[str, Any]
    reason: str = ""


def known_fields(message: msgspec.Struct) -> frozenset[str]:
    """The wire names a message type defines, its tag included."""
    return _FIELDS[type(message)]


_FIELDS: dict[type, frozenset[str]] = {
    t: frozenset((*t.__struct_fields__, "kind"))
    for t in AnyMessage.__args__  # type: ignore[attr-defined]
}
