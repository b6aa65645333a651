"""The wire schema: messages and typed metadata, their encoding, and value coercion."""

from __future__ import annotations

import datetime as dt
import math
import pathlib
from typing import Any

import msgspec
import pytest

from pipes_bus import EncodeError
from pipes_bus._wire.schema import PROTOCOL_MAJOR, PROTOCOL_MINOR, known_fields
from pipes_bus.messages import (
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

METADATA: list[MetadataValue] = [
    TextValue("hello"),
    IntValue(-(2**62)),
    FloatValue(2.5),
    BoolValue(False),
    JsonValue({"a": [1, 2.5, None, True, "x"], "b": {}}),
    JsonValue(None),
    UrlValue("https://example.com/a?b=c"),
    PathValue("/data/out.parquet"),
    MarkdownValue("# Title\n\n*ok*"),
    TimestampValue(1_700_000_000.25),
    TableValue(records=[{"a": 1, "b": "x"}, {"a": 2, "b": None}]),
    TableValue(
        records=[],
        columns=[TableColumn("a", "int", "the a"), TableColumn("b")],
    ),
]

MESSAGES: list[Any] = [
    Opened(
        time=1.5,
        info=WriterInfo(id="w-1", label="rank 0", pid=42, host="h", library="pipes_bus 1"),
        extras={"k": [1, 2]},
    ),
    Opened(info=WriterInfo(id="w-2")),
    Log(message="hi", level="warning", logger="app", fields={"n": 1, "s": "t"}),
    Log(message=""),
    Materialization(
        asset_key="db/table",
        data_version="v7",
        metadata={f"m{i}": value for i, value in enumerate(METADATA)},
    ),
    Materialization(asset_key="a"),
    Check(
        asset_key="a",
        check_name="not_null",
        passed=False,
        severity="warn",
        metadata={"rows": IntValue(3)},
    ),
    Check(asset_key="a", check_name="c", passed=True),
    Progress(current=3, total=10, unit="files", label="copy"),
    Progress(current=0.5),
    Custom(payload={"nested": [{"x": 1}, [1, 2, 3]], "s": "é\u2603"}),
    Custom(),
    Output(stream="stderr", text="line 1\nline 2\n"),
    Closed(count=12),
    Closed(
        count=3,
        exception=ExceptionInfo(
            type="ValueError",
            message="bad",
            stack=["  File x, line 1\n"],
            cause=ExceptionInfo(type="KeyError", message="'k'"),
            context=ExceptionInfo(type="OSError", message="disk"),
        ),
    ),
]

CODECS = {
    "json": (msgspec.json.encode, msgspec.json.decode),
    "msgpack": (msgspec.msgpack.encode, msgspec.msgpack.decode),
}


class TestMetadataValues:
    """Typed metadata values on the wire."""

    @pytest.mark.parametrize("codec", sorted(CODECS))
    @pytest.mark.parametrize("value", METADATA, ids=lambda v: type(v).__name__)
    def test_every_type_round_trips(self, value: MetadataValue, codec: str) -> None:
        """Each metadata type decodes back to an equal value, as the same type."""
        encode, decode = CODECS[codec]
        back = decode(encode(value), type=MetadataValue)
        assert back == value
        assert type(back) is type(value)

    def test_wire_form_is_type_and_value(self) -> None:
        """A metadata value is encoded as {"type": tag, "value": ...}, defaults left out."""
        assert msgspec.json.encode(IntValue(3)) == b'{"type":"int","value":3}'
        assert msgspec.json.encode(MarkdownValue("x")) == b'{"type":"md","value":"x"}'
        assert msgspec.json.encode(TableValue(records=[{"a": 1}])) == (
            b'{"type":"table","records":[{"a":1}]}'
        )

    def test_tags_are_the_documented_names(self) -> None:
        """The ten metadata tags are text, int, float, bool, json, url, path, md, timestamp, table."""
        tags = [t.__struct_config__.tag for t in MetadataValue.__args__]  # type: ignore[attr-defined]
        assert tags == [
            "text",
            "int",
            "float",
            "bool",
            "json",
            "url",
            "path",
            "md",
            "timestamp",
            "table",
        ]


class TestMetadataValueCoercion:
    """metadata_value: plain Python values to typed metadata."""

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (True, BoolValue(True)),
            (False, BoolValue(False)),
            (0, IntValue(0)),
            (10**18, IntValue(10**18)),
            (1.25, FloatValue(1.25)),
            ("s", TextValue("s")),
            (None, JsonValue(None)),
            ({"a": 1}, JsonValue({"a": 1})),
            ([1, "b"], JsonValue([1, "b"])),
            ((1, 2), JsonValue((1, 2))),
        ],
        ids=repr,
    )
    def test_plain_values_map_to_their_type(self, raw: Any, expected: MetadataValue) -> None:
        """Each plain value maps to exactly one typed value."""
        value = metadata_value(raw)
        assert value == expected
        assert type(value) is type(expected)

    def test_bool_is_not_taken_for_int(self) -> None:
        """True becomes BoolValue, though bool is a subclass of int."""
        assert type(metadata_value(True)) is BoolValue
        assert type(metadata_value(1)) is IntValue

    def test_aware_datetime_becomes_its_epoch_timestamp(self) -> None:
        """An aware datetime becomes a TimestampValue of its exact epoch seconds."""
        moment = dt.datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        assert metadata_value(moment) == TimestampValue(1704157445.25)

    def test_naive_datetime_is_taken_as_utc(self) -> None:
        """A naive datetime is read as UTC, not local time."""
        assert metadata_value(dt.datetime(1970, 1, 2)) == TimestampValue(86400.0)

    def test_path_becomes_path_value(self, tmp_path: pathlib.Path) -> None:
        """An os.PathLike becomes a PathValue of its string form."""
        assert metadata_value(tmp_path / "out.csv") == PathValue(str(tmp_path / "out.csv"))

    def test_typed_values_pass_through(self) -> None:
        """A value that is already typed is returned as it is."""
        url = UrlValue("https://x")
        assert metadata_value(url) is url

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_non_finite_floats_are_refused(self, bad: float) -> None:
        """NaN and infinities raise EncodeError naming the value, since JSON cannot carry them."""
        with pytest.raises(EncodeError, match="is not finite"):
            metadata_value(bad)

    @pytest.mark.parametrize("bad", [object(), {1, 2}, b"bytes", 1 + 2j])
    def test_unsupported_types_are_refused(self, bad: Any) -> None:
        """Values of other types raise EncodeError naming the type."""
        with pytest.raises(EncodeError, match=f"Cannot use {type(bad).__name__} as a metadata"):
            metadata_value(bad)


class TestMessages:
    """Every message kind on the wire."""

    @pytest.mark.parametrize("codec", sorted(CODECS))
    @pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
    def test_every_kind_round_trips(self, message: Any, codec: str) -> None:
        """Each message decodes back, through the tagged union, to an equal message."""
        encode, decode = CODECS[codec]
        back = decode(encode(message), type=AnyMessage)
        assert back == message
        assert type(back) is type(message)

    def test_kind_tags_are_the_documented_names(self) -> None:
        """The message kinds are opened, log, materialization, check, progress, custom, output, closed."""
        tags = [t.__struct_config__.tag for t in AnyMessage.__args__]  # type: ignore[attr-defined]
        assert tags == [
            "opened",
            "log",
            "materialization",
            "check",
            "progress",
            "custom",
            "output",
            "closed",
        ]

    def test_defaults_are_left_off_the_wire(self) -> None:
        """Only the kind and the fields that differ from their defaults are encoded."""
        assert msgspec.json.encode(Log(message="x")) == b'{"kind":"log","message":"x"}'
        assert msgspec.json.encode(Closed()) == b'{"kind":"closed"}'
        assert msgspec.json.encode(Custom(time=2.0, payload=[1])) == (
            b'{"kind":"custom","payload":[1],"time":2.0}'
        )

    def test_messages_are_frozen(self) -> None:
        """Messages cannot be changed after they are made."""
        message = Log(message="x")
        with pytest.raises(AttributeError):
            message.message = "y"  # type: ignore[misc]

    def test_known_fields_lists_wire_names_and_kind(self) -> None:
        """known_fields gives every field a message type defines, plus "kind"."""
        assert known_fields(Log(message="x")) == {
            "kind",
            "time",
            "message",
            "level",
            "logger",
            "fields",
        }
        assert known_fields(Closed()) == {"kind", "time", "count", "exception"}

    def test_unknown_message_keeps_the_raw_data(self) -> None:
        """UnknownMessage carries the kind, the decoded data and a reason, and round-trips."""
        unknown = UnknownMessage(kind="future", data={"kind": "future", "x": 1}, reason="why")
        assert msgspec.json.decode(msgspec.json.encode(unknown), type=UnknownMessage) == unknown


class TestExceptionInfo:
    """ExceptionInfo.from_exception: a structured exception with its chain."""

    def test_captures_type_message_and_traceback(self) -> None:
        """Type (module-qualified unless builtin), message and the traceback lines are kept."""
        try:
            raise KeyError("missing")
        except KeyError as exc:
            info = ExceptionInfo.from_exception(exc)
        assert info.type == "KeyError"
        assert info.message == "'missing'"
        assert len(info.stack) == 1
        assert "test_captures_type_message_and_traceback" in info.stack[0]
        assert info.cause is None
        assert info.context is None

    def test_non_builtin_types_are_module_qualified(self) -> None:
        """A non-builtin exception's type includes its module."""
        info = ExceptionInfo.from_exception(msgspec.ValidationError("v"))
        assert info.type == "msgspec.ValidationError"
        assert info.stack == []

    def test_explicit_cause_is_kept(self) -> None:
        """`raise ... from ...` is recorded as cause, not context."""
        try:
            try:
                raise OSError("disk")
            except OSError as inner:
                raise RuntimeError("outer") from inner
        except RuntimeError as exc:
            info = ExceptionInfo.from_exception(exc)
        assert info.cause is not None
        assert (info.cause.type, info.cause.message) == ("OSError", "disk")
        assert info.context is None

    def test_implicit_context_is_kept_unless_suppressed(self) -> None:
        """An exception raised while handling another records it as context; `from None` drops it."""
        try:
            try:
                raise ValueError("first")
            except ValueError:
                raise TypeError("second")  # noqa: B904 - the implicit context is the point
        except TypeError as exc:
            info = ExceptionInfo.from_exception(exc)
        assert info.context is not None
        assert (info.context.type, info.context.message) == ("ValueError", "first")
        try:
            try:
                raise ValueError("first")
            except ValueError:
                raise TypeError("second") from None
        except TypeError as exc:
            info = ExceptionInfo.from_exception(exc)
        assert info.context is None
        assert info.cause is None

    def test_long_chains_are_cut_at_sixteen_links(self) -> None:
        """A cause chain longer than 16 links is recorded to depth 16 and no further."""
        exc: BaseException = ValueError("0")
        for i in range(1, 40):
            nxt = ValueError(str(i))
            nxt.__cause__ = exc
            exc = nxt
        info: ExceptionInfo | None = ExceptionInfo.from_exception(exc)
        depth = 0
        while info is not None:
            depth += 1
            info = info.cause
        assert depth == 17


class TestProtocolVersion:
    """PROTOCOL_VERSION: MAJOR.MINOR, apart from the package version."""

    def test_version_parts_agree(self) -> None:
        """PROTOCOL_VERSION is "MAJOR.MINOR" built from PROTOCOL_MAJOR and PROTOCOL_MINOR."""
        assert PROTOCOL_VERSION == f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}" == "1.1"
