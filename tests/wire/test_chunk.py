"""Chunks: the self-describing immutable objects a stream is made of."""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import Any

import msgspec
import pytest

from pipes_bus._wire.chunk import (
    FORMAT,
    BadMessage,
    ChunkHeader,
    ChunkProblem,
    build_chunk,
    checksum,
    parse_chunk,
    parse_header,
    sign,
)
from pipes_bus._wire.limits import MAX_NESTING, json_too_deep, value_too_deep
from pipes_bus.messages import Closed, Custom, Log, UnknownMessage

MESSAGES: list[Any] = [
    Log(message="hello", level="debug"),
    Custom(payload={"n": 1, "xs": [1.5, "a", None]}),
    Closed(count=2),
]
CODECS = ["gzip", "zlib", "bz2", "lzma"]
DAMAGE_REASONS = {"corrupt", "truncated", "foreign", "newer_protocol"}


def body_of(messages: list[Any], encoding: str = "jsonl") -> bytes:
    """The body a writer makes of ``messages``."""
    if encoding == "jsonl":
        return b"".join(msgspec.json.encode(m) + b"\n" for m in messages)
    items = b"".join(msgspec.msgpack.encode(m) for m in messages)
    return b"\xdd" + len(messages).to_bytes(4, "big") + items


def forge(body: bytes, key: bytes | None = None, **fields: Any) -> bytes:
    """A chunk with any header members at all, and a valid checksum (and mac, with a key)."""
    header = {
        "format": FORMAT,
        "protocol": "1.0",
        "writer": "w",
        "chunk": 0,
        "first": 0,
        "count": 1,
        "size": len(body),
        "crc32": 0,
        **fields,
    }
    line = msgspec.json.encode(header)
    crc = checksum(line, body)
    assert crc is not None
    line = line.replace(b'"crc32":0', b'"crc32":%d' % crc)
    if key is not None:
        line = line[:-1] + b',"mac":"' + sign(key, line, body).encode() + b'"}'
    return line + b"\n" + body


def problem(data: bytes, **kwargs: Any) -> ChunkProblem:
    """The ChunkProblem parse_chunk raises for ``data`` read as chunk 0 of writer "w"."""
    kwargs.setdefault("writer", "w")
    kwargs.setdefault("chunk", 0)
    with pytest.raises(ChunkProblem) as info:
        parse_chunk(data, **kwargs)
    return info.value


def chunk(messages: list[Any] = MESSAGES, **kwargs: Any) -> bytes:
    """A well-formed chunk 0 of writer "w" holding ``messages``."""
    encoding = kwargs.pop("encoding", "jsonl")
    return build_chunk(
        writer="w",
        chunk=0,
        first=0,
        count=len(messages),
        body=body_of(messages, encoding),
        encoding=encoding,
        **kwargs,
    )


class TestChunkHeader:
    """The header line: what a chunk says about itself."""

    def test_jsonl_header_names_format_protocol_writer_range_size_and_checksum(self) -> None:
        """A plain JSON Lines chunk's header has exactly these members, in this order."""
        body = body_of(MESSAGES)
        data = build_chunk(writer="w-1", chunk=7, first=700, count=3, body=body)
        line, _, rest = data.partition(b"\n")
        assert rest == body
        header = msgspec.json.decode(line)
        assert list(header) == [
            "format",
            "protocol",
            "writer",
            "chunk",
            "first",
            "count",
            "size",
            "crc32",
        ]
        assert header["format"] == "pipes-bus-chunk"
        assert header["protocol"] == "1.1"
        assert (header["writer"], header["chunk"], header["first"], header["count"]) == (
            "w-1",
            7,
            700,
            3,
        )
        assert header["size"] == len(body)
        assert header["crc32"] == checksum(line.replace(b"%d" % header["crc32"], b"0"), body)

    def test_options_are_described_in_the_header(self) -> None:
        """Encoding, compression, the final flag and the signature appear when used."""
        data = chunk(encoding="msgpack", compression="gzip", final=True, key=b"k")
        header = msgspec.json.decode(data.partition(b"\n")[0])
        assert header["encoding"] == "msgpack"
        assert header["compression"] == "gzip"
        assert header["final"] is True
        assert len(header["mac"]) == 64
        assert list(header)[-1] == "mac"

    def test_parse_header_splits_header_line_and_body(self) -> None:
        """parse_header returns the decoded header, its raw line, and the body bytes."""
        data = chunk()
        header, line, body = parse_header(data)
        assert isinstance(header, ChunkHeader)
        assert (header.format, header.protocol, header.count) == (FORMAT, "1.1", 3)
        assert line + b"\n" + body == data

    def test_header_without_format_and_protocol_is_foreign(self) -> None:
        """A JSON line lacking "format" and "protocol" is not taken for a chunk."""
        body = body_of(MESSAGES)
        line = msgspec.json.encode(
            {"writer": "w", "chunk": 0, "first": 0, "count": 3, "size": len(body), "crc32": 0}
        )
        assert problem(line + b"\n" + body).reason == "foreign"


class TestRoundTrip:
    """build_chunk then parse_chunk gives back the messages."""

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    @pytest.mark.parametrize("compression", [None, *CODECS])
    def test_messages_round_trip(self, encoding: str, compression: str | None) -> None:
        """Every encoding and compression returns the exact messages and header."""
        data = chunk(encoding=encoding, compression=compression)
        decoded = parse_chunk(data, writer="w", chunk=0)
        assert decoded.messages == MESSAGES
        assert decoded.unknown_fields is None
        assert decoded.header.encoding == encoding
        assert decoded.header.compression == compression

    @pytest.mark.parametrize("compression", CODECS)
    def test_compression_shrinks_the_stored_body(self, compression: str) -> None:
        """A compressible body is stored compressed; size is the stored size."""
        messages = [Log(message="x" * 1000)] * 20
        data = chunk(messages, compression=compression)
        header, _, body = parse_header(data)
        assert header.size == len(body)
        assert len(body) < len(body_of(messages)) // 10

    @pytest.mark.parametrize("compression", [None, *CODECS])
    def test_building_is_reproducible(self, compression: str | None) -> None:
        """The same chunk built twice is byte-identical (a writer relies on it after a lost reply)."""
        assert chunk(compression=compression) == chunk(compression=compression)

    def test_an_empty_chunk_round_trips(self) -> None:
        """A chunk of zero messages decodes to no messages."""
        assert parse_chunk(chunk([]), writer="w", chunk=0).messages == []


class TestDamage:
    """Damaged, truncated and foreign objects are refused with a reason."""

    def test_empty_object_is_truncated(self) -> None:
        """An empty object is reported truncated."""
        p = problem(b"")
        assert (p.reason, p.detail) == ("truncated", "the object is empty")

    def test_cut_body_is_truncated(self) -> None:
        """An object cut inside its body is reported truncated, with the byte counts."""
        data = chunk()
        size = len(data.partition(b"\n")[2])
        p = problem(data[:-5])
        assert (p.reason, p.detail) == ("truncated", f"the body has {size - 5} of its {size} bytes")

    def test_cut_header_is_truncated(self) -> None:
        """An object cut inside its header line is reported truncated, not foreign."""
        data = chunk()
        assert problem(data[:40]).reason == "truncated"

    def test_extra_bytes_are_corrupt(self) -> None:
        """Bytes past the stated size make the chunk corrupt."""
        assert problem(chunk() + b"x").reason == "corrupt"

    def test_changed_body_fails_the_checksum(self) -> None:
        """A body changed in place (same length) fails the checksum."""
        data = chunk().replace(b"hello", b"jello")
        p = problem(data)
        assert (p.reason, p.detail) == ("corrupt", "the chunk does not match its checksum")

    def test_changed_header_fails_the_checksum(self) -> None:
        """A header whose message range was changed fails the checksum too."""
        data = build_chunk(writer="w", chunk=0, first=700, count=3, body=body_of(MESSAGES))
        p = problem(data.replace(b'"first":700', b'"first":701'))
        assert (p.reason, p.detail) == ("corrupt", "the chunk does not match its checksum")

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_no_single_bit_flip_is_ever_delivered(self, encoding: str) -> None:
        """Flipping any one bit of a chunk, header or body, makes it refused as damaged."""
        data = build_chunk(
            writer="w",
            chunk=0,
            first=5,
            count=2,
            body=body_of(MESSAGES[:2], encoding),
            encoding=encoding,
            final=True,
        )
        reasons = set()
        for bit in range(len(data) * 8):
            damaged = bytearray(data)
            damaged[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises(ChunkProblem) as info:
                parse_chunk(bytes(damaged), writer="w", chunk=0)
            reasons.add(info.value.reason)
        assert reasons <= DAMAGE_REASONS
        assert "corrupt" in reasons

    @pytest.mark.parametrize(
        "data",
        [b"hello world", b"PAR1\x00\x01\x02", b'{"some":"json"}\nbody', b"\n", b"x" * 70000],
        ids=["text", "binary", "json", "newline", "no-newline-long"],
    )
    def test_foreign_objects_are_foreign(self, data: bytes) -> None:
        """Objects that are not chunks at all are reported foreign."""
        assert problem(data).reason == "foreign"

    def test_another_format_is_foreign_and_named(self) -> None:
        """A header of another format is foreign, and the detail names that format."""
        p = problem(forge(b"", count=0, format="other-log"))
        assert (p.reason, p.detail) == (
            "foreign",
            "the object's format is 'other-log', not 'pipes-bus-chunk'",
        )

    def test_chunk_of_another_writer_is_foreign(self) -> None:
        """A valid chunk found in the wrong stream is foreign, naming where it belongs."""
        data = build_chunk(writer="a", chunk=0, first=0, count=3, body=body_of(MESSAGES))
        p = problem(data, writer="b")
        assert (p.reason, p.detail) == ("foreign", "the chunk says it is chunk 0 of writer 'a'")

    def test_chunk_at_another_position_is_foreign(self) -> None:
        """A valid chunk found under another chunk number is foreign."""
        data = build_chunk(writer="w", chunk=3, first=0, count=3, body=body_of(MESSAGES))
        p = problem(data, chunk=4)
        assert (p.reason, p.detail) == ("foreign", "the chunk says it is chunk 3 of writer 'w'")

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_count_mismatch_is_corrupt(self, encoding: str) -> None:
        """A body holding a different number of messages than the header says is corrupt."""
        body = body_of(MESSAGES[:2], encoding)
        p = problem(forge(body, count=3, encoding=encoding))
        assert (p.reason, p.detail) == ("corrupt", "the body holds 2 messages; the header says 3")

    def test_invalid_msgpack_body_is_corrupt(self) -> None:
        """A MessagePack body that does not decode, or is not an array, is corrupt."""
        assert problem(forge(b"\xc1", encoding="msgpack")).reason == "corrupt"
        p = problem(forge(msgspec.msgpack.encode({"a": 1}), encoding="msgpack"))
        assert (p.reason, p.detail) == ("corrupt", "the body is not a MessagePack array")


class TestCompressionSafety:
    """Decompression is bounded and checked."""

    @pytest.mark.parametrize("compression", CODECS)
    def test_decompression_bomb_is_refused(self, compression: str) -> None:
        """A body that inflates past max_body_bytes is refused, not inflated."""
        messages = [Custom(payload="0" * (1024 * 1024))] * 8
        data = chunk(messages, compression=compression)
        assert len(data) < 64 * 1024
        p = problem(data, max_body_bytes=1024 * 1024)
        assert p.reason == "corrupt"
        assert p.detail == (
            "the body cannot be decompressed: decompressed body is over the 1048576-byte limit"
        )

    @pytest.mark.parametrize("compression", CODECS)
    def test_limit_is_inclusive(self, compression: str) -> None:
        """A body exactly at max_body_bytes is accepted; one byte less is refused."""
        size = len(body_of(MESSAGES))
        data = chunk(compression=compression)
        assert parse_chunk(data, writer="w", chunk=0, max_body_bytes=size).messages == MESSAGES
        assert problem(data, max_body_bytes=size - 1).reason == "corrupt"

    @pytest.mark.parametrize(
        ("compression", "compress"),
        [
            ("gzip", gzip.compress),
            ("zlib", zlib.compress),
            ("bz2", bz2.compress),
            ("lzma", lzma.compress),
        ],
    )
    def test_incomplete_compressed_body_is_corrupt(self, compression: str, compress: Any) -> None:
        """A compressed stream cut short (with a matching checksum) is corrupt."""
        whole = compress(body_of(MESSAGES * 50))
        p = problem(forge(whole[: len(whole) // 2], count=150, compression=compression))
        assert p.reason == "corrupt"
        assert p.detail.startswith("the body cannot be decompressed")

    def test_unknown_compression_is_a_newer_protocol(self) -> None:
        """A compression this reader does not know is reported as newer_protocol."""
        p = problem(forge(b"??", compression="zstd"))
        assert (p.reason, p.detail) == (
            "newer_protocol",
            "the chunk's compression 'zstd' is unknown",
        )

    def test_unknown_encoding_is_a_newer_protocol(self) -> None:
        """An encoding this reader does not know is reported as newer_protocol."""
        p = problem(forge(b"??", encoding="cbor"))
        assert (p.reason, p.detail) == ("newer_protocol", "the chunk's encoding 'cbor' is unknown")


class TestProtocolVersions:
    """Chunks of other protocol versions."""

    def test_newer_major_is_reported_not_guessed_at(self) -> None:
        """A chunk of protocol 2.x is refused as newer_protocol, telling what to upgrade."""
        p = problem(forge(body_of(MESSAGES[:1]), protocol="2.0"))
        assert p.reason == "newer_protocol"
        assert p.detail == (
            "the chunk uses protocol 2.0; this reader speaks 1.1. "
            "Upgrade pipes_bus on the orchestrator side."
        )

    def test_newer_major_with_a_changed_header_is_still_newer_protocol(self) -> None:
        """A 2.x header this version cannot even decode is newer_protocol, not corrupt."""
        line = msgspec.json.encode(
            {"format": FORMAT, "protocol": "2.1", "writer": "w", "chunk": 0, "range": [0, 1]}
        )
        assert problem(line + b"\nbody").reason == "newer_protocol"

    @pytest.mark.parametrize("version", ["0.9", "x", ""])
    def test_older_or_unreadable_versions_are_corrupt(self, version: str) -> None:
        """A version below 1 or not a version at all is corrupt, and the advice is not to
        upgrade this reader (that is for a newer major)."""
        found = problem(forge(body_of(MESSAGES[:1]), protocol=version))
        assert found.reason == "corrupt"
        assert "older pipes_bus" in found.detail
        assert "Upgrade" not in found.detail


class TestForwardCompatibility:
    """Chunks from a newer minor protocol: unknown kinds and fields pass through."""

    LINES: list[dict[str, Any]] = [
        {"kind": "log", "message": "hi", "color": "red", "time": 1.0},
        {"kind": "telemetry", "cpu": 0.5},
        {"kind": "custom", "payload": 7},
    ]

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_unknown_kinds_and_fields_reach_the_reader(self, encoding: str) -> None:
        """A 1.x chunk's new kind becomes UnknownMessage and new fields unknown_fields."""
        if encoding == "jsonl":
            body = b"".join(msgspec.json.encode(line) + b"\n" for line in self.LINES)
        else:
            body = msgspec.msgpack.encode(self.LINES)
        data = forge(body, count=3, protocol="1.7", encoding=encoding, shiny="new")
        decoded = parse_chunk(data, writer="w", chunk=0)
        assert decoded.messages == [
            Log(message="hi", time=1.0),
            UnknownMessage(kind="telemetry", data=self.LINES[1], reason="unknown kind"),
            Custom(payload=7),
        ]
        assert decoded.unknown_fields == {0: {"color": "red"}}

    def test_unknown_kind_in_a_same_version_chunk_is_passed_on(self) -> None:
        """A same-version chunk with one undecodable line still delivers the other lines."""
        lines = [b'{"kind":"log","message":"a"}', b'{"kind":"mystery"}', b'{"kind":"closed"}']
        decoded = parse_chunk(forge(b"\n".join(lines) + b"\n", count=3), writer="w", chunk=0)
        assert decoded.messages == [
            Log(message="a"),
            UnknownMessage(kind="mystery", data={"kind": "mystery"}, reason="unknown kind"),
            Closed(),
        ]
        assert decoded.unknown_fields is None

    def test_mistyped_field_in_a_same_version_chunk_is_a_bad_message(self) -> None:
        """A known kind with a field of the wrong type, in a chunk of this reader's own
        protocol, is a BadMessage naming the path (no newer writer sends it)."""
        decoded = parse_chunk(
            forge(b'{"kind":"log","message":5}\n{"kind":"closed"}\n', count=2),
            writer="w",
            chunk=0,
        )
        assert decoded.messages == [
            BadMessage("its 'log' message is invalid: Expected `str`, got `int` - at `$.message`"),
            Closed(),
        ]
        assert decoded.bad == (0,)

    def test_mistyped_field_from_a_newer_minor_is_passed_on_with_the_path(self) -> None:
        """From a newer minor protocol the same message is an UnknownMessage with the path."""
        data = forge(b'{"kind":"log","message":5}\n', protocol="1.3")
        decoded = parse_chunk(data, writer="w", chunk=0)
        assert decoded.messages == [
            UnknownMessage(
                kind="log",
                data={"kind": "log", "message": 5},
                reason="Expected `str`, got `int` - at `$.message`",
            )
        ]
        assert decoded.bad == ()

    @pytest.mark.parametrize(
        ("line", "detail"),
        [
            (b"[1,2]", "it is not a message (an object with a string `kind`)"),
            (b'"text"', "it is not a message (an object with a string `kind`)"),
            (b'{"kind":3}', "it is not a message (an object with a string `kind`)"),
            (b"{not json", "it is not valid JSON (JSON is malformed: "),
            (b'{"kind":"log","message":"\xff\xfe"}', "it is not valid JSON ("),
        ],
        ids=["array", "string", "kind-not-text", "not-json", "not-utf8"],
    )
    @pytest.mark.parametrize("protocol", ["1.0", "1.9"])
    def test_a_line_that_is_not_a_message_is_a_bad_message(
        self, line: bytes, detail: str, protocol: str
    ) -> None:
        """Undecodable data in an intact chunk is a BadMessage, not an unknown message, and
        the lines around it are delivered."""
        body = b'{"kind":"log","message":"a"}\n' + line + b'\n{"kind":"closed","count":2}\n'
        decoded = parse_chunk(forge(body, count=3, protocol=protocol), writer="w", chunk=0)
        first, bad, last = decoded.messages
        assert first == Log(message="a")
        assert isinstance(bad, BadMessage) and bad.detail.startswith(detail), bad
        assert last == Closed(count=2)
        assert decoded.bad == (1,)


class TestNesting:
    """Nesting is bounded by one limit, shared with the writer."""

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    @pytest.mark.parametrize("depth", [MAX_NESTING, 990, 5000])
    def test_a_message_nested_too_deep_is_a_bad_message(self, encoding: str, depth: int) -> None:
        """A message nested deeper than MAX_NESTING (the message itself is one level) is a
        BadMessage; the others in the chunk are delivered, however deep the stack."""
        deep = b'{"kind":"custom","payload":' + b"[" * depth + b"]" * depth + b"}"
        if encoding == "jsonl":
            body = b'{"kind":"log","message":"a"}\n' + deep + b'\n{"kind":"closed","count":2}\n'
        else:
            items = (
                msgspec.msgpack.encode(Log(message="a"))
                + b"\x82\xa4kind\xa6custom\xa7payload"
                + b"\x91" * (depth - 1)
                + b"\x90"
                + msgspec.msgpack.encode(Closed(count=2))
            )
            body = b"\xdd" + (3).to_bytes(4, "big") + items
        decoded = parse_chunk(forge(body, count=3, encoding=encoding), writer="w", chunk=0)
        assert decoded.messages[0] == Log(message="a")
        assert decoded.messages[1] == BadMessage(
            f"it is nested deeper than {MAX_NESTING} levels of arrays and objects"
        )
        assert decoded.messages[2] == Closed(count=2)
        assert decoded.bad == (1,)

    @pytest.mark.parametrize("encoding", ["jsonl", "msgpack"])
    def test_the_deepest_allowed_message_is_delivered(self, encoding: str) -> None:
        """A message exactly MAX_NESTING deep is delivered as it was written."""
        payload: Any = 1
        for _ in range(MAX_NESTING - 1):
            payload = [payload]
        message = Custom(payload=payload)
        decoded = parse_chunk(chunk([message], encoding=encoding), writer="w", chunk=0)
        assert decoded.messages == [message]
        assert decoded.bad == ()

    def test_brackets_inside_strings_do_not_count(self) -> None:
        """Text full of brackets is not nesting: it is delivered, also when unbalanced."""
        messages = [Log(message="[" * 500), Log(message="{" * 300 + "]" * 700)]
        decoded = parse_chunk(chunk(messages), writer="w", chunk=0)
        assert decoded.messages == messages

    @pytest.mark.parametrize("depth", [MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1, 3000])
    def test_json_and_value_checks_agree(self, depth: int) -> None:
        """The byte-level test and the value-level test draw the line at the same depth."""
        value: Any = 0
        for _ in range(depth):
            value = {"k": [value]} if depth % 2 else [value]
        text = b"[" * depth + b"0" + b"]" * depth
        assert json_too_deep(text) is (depth > MAX_NESTING)
        assert json_too_deep(text, exact=False) is (depth > MAX_NESTING)
        listed: Any = 0
        for _ in range(depth):
            listed = [listed]
        assert value_too_deep(listed) is (depth > MAX_NESTING)

    def test_a_header_nested_too_deep_is_corrupt(self) -> None:
        """A header line with a deeply nested extra member is a corrupt chunk, not a crash."""
        line = (
            b'{"format":"pipes-bus-chunk","protocol":"1.0","x":'
            + b"[" * 20000
            + b"]" * 20000
            + b"}"
        )
        assert problem(line + b"\n").reason == "corrupt"


class TestSigning:
    """Chunks signed with a session key."""

    def test_signed_chunk_verifies_with_the_key(self) -> None:
        """A chunk signed with a key parses with that key."""
        assert parse_chunk(chunk(key=b"secret"), writer="w", chunk=0, key=b"secret").messages == (
            MESSAGES
        )

    def test_signed_chunk_reads_without_a_key(self) -> None:
        """A reader without a key still reads a signed chunk."""
        assert parse_chunk(chunk(key=b"secret"), writer="w", chunk=0).messages == MESSAGES

    def test_unsigned_chunk_is_refused_when_a_key_is_set(self) -> None:
        """With a key, an unsigned chunk is unauthenticated."""
        p = problem(chunk(), key=b"secret")
        assert (p.reason, p.detail) == ("unauthenticated", "the chunk is not signed")

    def test_wrong_key_is_refused(self) -> None:
        """A chunk signed with another key is unauthenticated."""
        p = problem(chunk(key=b"other"), key=b"secret")
        assert (p.reason, p.detail) == ("unauthenticated", "the chunk's signature is wrong")

    def test_forged_body_with_a_fixed_checksum_is_refused(self) -> None:
        """Replacing the body and recomputing the checksum does not get past the signature."""
        real = chunk(key=b"secret")
        mac = msgspec.json.decode(real.partition(b"\n")[0])["mac"]
        body = body_of([Log(message="forged")])
        fake = forge(body, count=1)
        line, _, rest = fake.partition(b"\n")
        fake = line[:-1] + b',"mac":"' + mac.encode() + b'"}\n' + rest
        p = problem(fake, key=b"secret")
        assert (p.reason, p.detail) == ("unauthenticated", "the chunk's signature is wrong")

    def test_newer_minor_header_members_are_covered_as_stored(self) -> None:
        """A signed 1.x header with members this version does not know still verifies."""
        data = forge(body_of(MESSAGES[:1]), key=b"secret", protocol="1.3", extra={"a": 1})
        decoded = parse_chunk(data, writer="w", chunk=0, key=b"secret")
        assert decoded.messages == MESSAGES[:1]
