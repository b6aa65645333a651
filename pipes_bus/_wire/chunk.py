"""Chunks: the immutable objects a stream is made of.

A chunk is one header line of JSON, a newline, then the body::

    {"format":"pipes-bus-chunk","protocol":"1.0","writer":"w-...","chunk":7,
     "first":700,"count":100,"size":5120,"crc32":123456789}\\n
    <body: `size` bytes, compressed if "compression" is set>

The body is JSON Lines (one message per line) or a MessagePack array; ``encoding``
says which and is left out for JSON Lines. ``format`` and ``protocol`` are always
written.

``crc32`` is the CRC-32 of the header line as stored, with its ``mac`` member removed and
its ``crc32`` value written as ``0``, then a newline, then the body as stored: a flipped
bit anywhere but in ``mac`` is caught, the index range in the header included. It is
computed over the stored bytes, not a re-encoding, so headers from a newer minor
protocol with extra members check just the same. ``mac`` (when the session has a key)
is an HMAC-SHA256 over the header line with its ``mac`` member removed, a newline, and
the body. Readers need nothing but the chunk to check it, so a chunk explains itself
wherever it is found.
"""

import hashlib
import hmac
import re
import zlib
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from pipes_bus._wire.limits import MAX_NESTING, MiB, json_too_deep, value_too_deep
from pipes_bus._wire.schema import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    PROTOCOL_VERSION,
    AnyMessage,
    Check,
    Custom,
    JsonValue,
    Log,
    Materialization,
    Message,
    Opened,
    TableValue,
    UnknownMessage,
    known_fields,
)

__all__ = ["FORMAT", "BadMessage", "ChunkHeader", "DecodedChunk", "build_chunk", "parse_chunk"]

FORMAT = "pipes-bus-chunk"
MAX_HEADER_BYTES = 64 * 1024

Encoding = Literal["jsonl", "msgpack"]
Compression = Literal["gzip", "zlib", "bz2", "lzma"]


class ChunkHeader(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The first line of every chunk.

    ``format`` and ``protocol`` have no defaults, so they are always written: a chunk
    must say what it is, and a reader of a later protocol must not take a chunk that
    does not say its version for one of its own.
    """

    format: str
    protocol: str
    writer: str
    chunk: int
    first: int
    count: int
    encoding: str = "jsonl"
    compression: str | None = None
    size: int
    crc32: int
    final: bool = False
    mac: str | None = None


_HEADER_ENCODER = msgspec.json.Encoder()
_HEADER_DECODER = msgspec.json.Decoder(ChunkHeader)

# Every chunk starts with these bytes: how a damaged chunk is told from a stranger.
_PREFIX = b'{"format":"' + FORMAT.encode() + b'"'
_CRC_MEMBER = re.compile(rb'"crc32":[0-9]+')
_MAC_MEMBER = re.compile(rb',"mac":"[^"]*"')


def _gzip(data: bytes | bytearray) -> bytes:
    # zlib.compress has no wbits before Python 3.11; no timestamp, so output is reproducible.
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _bz2(data: bytes | bytearray) -> bytes:
    import bz2  # loaded when used: most streams are never compressed this way

    return bz2.compress(data, 9)


def _lzma(data: bytes | bytearray) -> bytes:
    import lzma

    return lzma.compress(data)


_COMPRESSORS: dict[str, Callable[[bytes | bytearray], bytes]] = {
    "gzip": _gzip,
    "zlib": lambda data: zlib.compress(data, 6),
    "bz2": _bz2,
    "lzma": _lzma,
}


def _decompress(data: bytes, codec: str, limit: int) -> bytes:
    """Decompress at most ``limit`` bytes; raise ValueError past it (no bombs)."""
    decoder: Any
    if codec in ("gzip", "zlib"):
        decoder = zlib.decompressobj(wbits=31 if codec == "gzip" else 15)
    elif codec == "bz2":
        import bz2

        decoder = bz2.BZ2Decompressor()
    elif codec == "lzma":
        import lzma

        decoder = lzma.LZMADecompressor()
    else:
        raise ValueError(f"unknown compression {codec!r}")
    try:
        out = decoder.decompress(data, limit + 1)
    except (ValueError, OSError, EOFError):
        raise
    except Exception as exc:  # lzma.LZMAError, and whatever a codec raises on bad data
        raise ValueError(str(exc)) from exc
    if len(out) > limit:
        raise ValueError(f"decompressed body is over the {limit}-byte limit")
    if not decoder.eof:
        raise ValueError("compressed body is incomplete")
    return bytes(out)


def sign(key: bytes, header_line: bytes, body: bytes | bytearray) -> str:
    """HMAC-SHA256 of a chunk's unsigned header line and body, hex-encoded."""
    mac = hmac.new(key, header_line, hashlib.sha256)
    mac.update(b"\n")
    mac.update(body)
    return mac.hexdigest()


def checksum(unsigned_line: bytes, body: bytes | bytearray) -> int | None:
    """The ``crc32`` of a chunk, from its header line without ``mac``; None if unusable."""
    masked, n = _CRC_MEMBER.subn(b'"crc32":0', unsigned_line)
    if n != 1:
        return None
    return zlib.crc32(body, zlib.crc32(b"\n", zlib.crc32(masked)))


def build_chunk(
    *,
    writer: str,
    chunk: int,
    first: int,
    count: int,
    body: bytes | bytearray,
    encoding: str = "jsonl",
    compression: str | None = None,
    final: bool = False,
    key: bytes | None = None,
) -> bytes:
    """Assemble a chunk object from an encoded body."""
    if compression is not None:
        body = _COMPRESSORS[compression](body)
    header = ChunkHeader(
        format=FORMAT,
        protocol=PROTOCOL_VERSION,
        writer=writer,
        chunk=chunk,
        first=first,
        count=count,
        encoding=encoding,
        compression=compression,
        size=len(body),
        crc32=0,
        final=final,
    )
    crc = checksum(_HEADER_ENCODER.encode(header), body)
    assert crc is not None
    header = msgspec.structs.replace(header, crc32=crc)
    line = _HEADER_ENCODER.encode(header)
    if key is not None:
        signed = msgspec.structs.replace(header, mac=sign(key, line, body))
        line = _HEADER_ENCODER.encode(signed)
    return b"".join((line, b"\n", body))


class ChunkProblem(Exception):
    """A chunk cannot be delivered. ``reason`` is a StreamFault reason."""

    def __init__(self, reason: str, detail: str, header: ChunkHeader | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.header = header


class BadMessage(msgspec.Struct, frozen=True):
    """A message of an intact chunk that cannot be delivered: not JSON, not a message
    object, invalid fields, or nested too deep. ``detail`` says which."""

    detail: str


class DecodedChunk(msgspec.Struct, frozen=True):
    """A checked chunk: its header, its messages, and any unknown fields by position.

    ``bad`` holds the positions of :class:`BadMessage` items among ``messages``.
    """

    header: ChunkHeader
    messages: list[Message | UnknownMessage | BadMessage]
    unknown_fields: dict[int, dict[str, Any]] | None = None
    bad: tuple[int, ...] = ()


# msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a string;
# RecursionError for nesting deeper than the interpreter's stack allows.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_JSON_DECODER = msgspec.json.Decoder(AnyMessage)
_JSON_ANY = msgspec.json.Decoder()
_MSGPACK_DECODER = msgspec.msgpack.Decoder(list[AnyMessage])
_MSGPACK_ANY = msgspec.msgpack.Decoder()


def parse_header(data: bytes) -> tuple[ChunkHeader, bytes, bytes]:
    """Split a chunk into (header, header line, body); raise ChunkProblem if malformed."""
    end = data.find(b"\n", 0, MAX_HEADER_BYTES)
    if end < 0:
        if not data:
            raise ChunkProblem("truncated", "the object is empty")
        if data.startswith(_PREFIX) and len(data) < MAX_HEADER_BYTES:
            raise ChunkProblem("truncated", "the object ends inside its chunk header")
        raise ChunkProblem("foreign", "the object does not start with a pipes_bus chunk header")
    line = data[:end]
    try:
        header = _HEADER_DECODER.decode(line)
    except _DECODE_ERRORS as exc:
        raw = _try_json(line)
        if isinstance(raw, dict) and raw.get("format") == FORMAT:
            if _version(str(raw.get("protocol")))[0] > PROTOCOL_MAJOR:
                raise ChunkProblem(
                    "newer_protocol",
                    f"the chunk uses protocol {raw.get('protocol')}; this reader speaks "
                    f"{PROTOCOL_VERSION}. Upgrade pipes_bus on the orchestrator side.",
                ) from None
            raise ChunkProblem("corrupt", f"the chunk header is invalid: {exc}") from None
        if line.startswith(_PREFIX):
            raise ChunkProblem("corrupt", "the chunk header is not valid JSON") from None
        raise ChunkProblem(
            "foreign", "the object does not start with a pipes_bus chunk header"
        ) from None
    if header.format != FORMAT:
        raise ChunkProblem("foreign", f"the object's format is {header.format!r}, not {FORMAT!r}")
    return header, line, data[end + 1 :]


def _try_json(data: bytes) -> Any:
    try:
        return _JSON_ANY.decode(data)
    except _DECODE_ERRORS:
        return None


def parse_chunk(
    data: bytes,
    *,
    writer: str,
    chunk: int,
    key: bytes | None = None,
    max_body_bytes: int = 256 * MiB,
) -> DecodedChunk:
    """Check and decode a chunk read from ``writer``'s stream at position ``chunk``.

    Raises :class:`ChunkProblem` for anything that must not be delivered: foreign,
    corrupt, truncated, forged, or from a newer major protocol.
    """
    header, line, body = parse_header(data)
    major, minor = _version(header.protocol)
    if major > PROTOCOL_MAJOR:
        raise ChunkProblem(
            "newer_protocol",
            f"the chunk uses protocol {header.protocol}; this reader speaks "
            f"{PROTOCOL_VERSION}. Upgrade pipes_bus on the orchestrator side.",
            header,
        )
    if major != PROTOCOL_MAJOR:
        raise ChunkProblem(
            "corrupt",
            f"the chunk claims protocol {header.protocol!r}, which no pipes_bus of major "
            f"version {PROTOCOL_MAJOR} writes; it was written by an older pipes_bus, or it "
            "is damaged. Read it with a pipes_bus of its own major version.",
            header,
        )
    if len(body) < header.size:
        raise ChunkProblem(
            "truncated", f"the body has {len(body)} of its {header.size} bytes", header
        )
    if len(body) > header.size:
        raise ChunkProblem(
            "corrupt", f"the body has {len(body)} bytes; the header says {header.size}", header
        )
    unsigned = _MAC_MEMBER.sub(b"", line, count=1) if header.mac is not None else line
    if checksum(unsigned, body) != header.crc32:
        raise ChunkProblem("corrupt", "the chunk does not match its checksum", header)
    if key is not None:
        if header.mac is None:
            raise ChunkProblem("unauthenticated", "the chunk is not signed", header)
        if not hmac.compare_digest(sign(key, unsigned, body), header.mac):
            raise ChunkProblem("unauthenticated", "the chunk's signature is wrong", header)
    # After the checksum, so a damaged header reads as corrupt; an intact chunk copied
    # from elsewhere reads as foreign.
    if header.writer != writer or header.chunk != chunk:
        raise ChunkProblem(
            "foreign",
            f"the chunk says it is chunk {header.chunk} of writer {header.writer!r}",
            header,
        )
    if header.compression is not None:
        if header.compression not in _COMPRESSORS:
            raise ChunkProblem(
                "newer_protocol",
                f"the chunk's compression {header.compression!r} is unknown",
                header,
            )
        try:
            body = _decompress(body, header.compression, max_body_bytes)
        except (ValueError, OSError, EOFError) as exc:
            raise ChunkProblem(
                "corrupt", f"the body cannot be decompressed: {exc}", header
            ) from None
    if header.encoding == "jsonl":
        return _decode_jsonl(header, body, newer=minor > PROTOCOL_MINOR)
    if header.encoding == "msgpack":
        return _decode_msgpack(header, body, newer=minor > PROTOCOL_MINOR)
    raise ChunkProblem(
        "newer_protocol", f"the chunk's encoding {header.encoding!r} is unknown", header
    )


def _version(text: str) -> tuple[int, int]:
    try:
        major, _, minor = text.partition(".")
        return int(major), int(minor or 0)
    except ValueError:
        return (-1, 0)


def _decode_jsonl(header: ChunkHeader, body: bytes, *, newer: bool) -> DecodedChunk:
    # The quick nesting test counts brackets inside strings too: a chunk it flags is
    # decoded line by line, where each line gets the exact test.
    if not newer and not json_too_deep(body, exact=False):
        try:
            messages: list[Any] = _JSON_DECODER.decode_lines(body)
        except _DECODE_ERRORS:
            pass
        else:
            _check_count(header, len(messages))
            return DecodedChunk(header, messages)
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    _check_count(header, len(lines))
    raws: list[Any] = []
    for line in lines:
        if json_too_deep(line):
            raws.append(_TOO_DEEP)
            continue
        try:
            raws.append(_JSON_ANY.decode(line))
        except _DECODE_ERRORS as exc:
            raws.append(BadMessage(f"it is not valid JSON ({_reason(exc)})"))
    return _decode_each(header, raws, newer)


def _decode_msgpack(header: ChunkHeader, body: bytes, *, newer: bool) -> DecodedChunk:
    if not newer:
        try:
            messages: list[Any] = _MSGPACK_DECODER.decode(body)
        except _DECODE_ERRORS:
            pass
        else:
            _check_count(header, len(messages))
            if len(body) <= MAX_NESTING or not any(map(_message_too_deep, messages)):
                return DecodedChunk(header, messages)
    if not body or not (0x90 <= body[0] <= 0x9F or body[0] in (0xDC, 0xDD)):
        raise ChunkProblem("corrupt", "the body is not a MessagePack array", header)
    try:
        spans = _msgpack_items(body)
    except ValueError as exc:
        raise ChunkProblem("corrupt", f"the body is not valid MessagePack: {exc}", header) from None
    _check_count(header, len(spans))
    raws: list[Any] = []
    for start, end, deep in spans:
        if deep:
            raws.append(_TOO_DEEP)
            continue
        try:
            raws.append(_MSGPACK_ANY.decode(body[start:end]))
        except _DECODE_ERRORS as exc:
            raws.append(BadMessage(f"it is not valid MessagePack ({_reason(exc)})"))
    return _decode_each(header, raws, newer)


# MessagePack first bytes: how many bytes of length follow, or the fixed size that follows.
_MSGPACK_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4}
_MSGPACK_FIXED.update({0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8})
_MSGPACK_FIXED.update({0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17})  # fixext: type + data
_MSGPACK_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin, str: length
_MSGPACK_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}  # ext: length, then a type byte
_MSGPACK_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}


def _msgpack_items(body: bytes) -> list[tuple[int, int, bool]]:
    """(start, end, too deep) of each item of a MessagePack array, walked without recursion
    (so no nesting, however deep, can exhaust the stack)."""
    head = body[0]
    if 0x90 <= head <= 0x9F:
        count, pos = head & 0x0F, 1
    else:
        width = 2 if head == 0xDC else 4
        count, pos = int.from_bytes(body[1 : 1 + width], "big"), 1 + width
    spans = []
    for _ in range(count):
        start = pos
        pending = [1]  # items still to read at each open level
        deepest = 0
        while pending:
            if pending[-1] == 0:
                pending.pop()
                continue
            pending[-1] -= 1
            if pos >= len(body):
                raise ValueError("the body ends inside an item")
            byte = body[pos]
            pos += 1
            children = 0
            if byte <= 0x7F or byte >= 0xE0:
                pass
            elif byte <= 0x8F:
                children = 2 * (byte & 0x0F)
            elif byte <= 0x9F:
                children = byte & 0x0F
            elif byte <= 0xBF:
                pos += byte & 0x1F
            elif byte in _MSGPACK_FIXED:
                pos += _MSGPACK_FIXED[byte]
            elif byte in _MSGPACK_SIZED:
                width = _MSGPACK_SIZED[byte]
                pos += width + int.from_bytes(body[pos : pos + width], "big")
            elif byte in _MSGPACK_EXT:
                width = _MSGPACK_EXT[byte]
                pos += width + 1 + int.from_bytes(body[pos : pos + width], "big")
            elif byte in _MSGPACK_CONTAINERS:
                width, per = _MSGPACK_CONTAINERS[byte]
                children = per * int.from_bytes(body[pos : pos + width], "big")
                pos += width
            else:
                raise ValueError(f"byte 0x{byte:02x} at {pos - 1} starts no MessagePack value")
            if 0x80 <= byte <= 0x9F or byte in _MSGPACK_CONTAINERS:
                pending.append(children)
                deepest = max(deepest, len(pending) - 1)
        if pos > len(body):
            raise ValueError("the body ends inside an item")
        spans.append((start, pos, deepest > MAX_NESTING))
    if pos != len(body):
        raise ValueError(f"{len(body) - pos} bytes follow the last item")
    return spans


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return f"nested deeper than {MAX_NESTING} levels"
    return str(exc)


_TOO_DEEP = BadMessage(f"it is nested deeper than {MAX_NESTING} levels of arrays and objects")


def _message_too_deep(message: Any) -> bool:
    """Whether a decoded message nests too deep (only its free-form members can)."""
    kind = type(message)
    if kind is Custom:
        value: Any = message.payload
    elif kind is Log:
        value = message.fields
    elif kind is Opened:
        value = message.extras
    elif kind is Materialization or kind is Check:
        # message, metadata, metadata value: three levels above what the value holds.
        return any(
            value_too_deep(v.records if isinstance(v, TableValue) else v.value, MAX_NESTING - 3)
            for v in message.metadata.values()
            if type(v) is JsonValue or type(v) is TableValue
        )
    else:
        return False
    # The message is one level, its member the next.
    return (type(value) is dict or type(value) is list) and value_too_deep(value, MAX_NESTING - 1)


def _check_count(header: ChunkHeader, n: int) -> None:
    if n != header.count:
        raise ChunkProblem(
            "corrupt", f"the body holds {n} messages; the header says {header.count}", header
        )


def _decode_each(header: ChunkHeader, raws: list[Any], newer: bool) -> DecodedChunk:
    """The slow path: one message at a time, keeping what the schema does not know.

    Unknown kinds are a newer writer's and are passed on; in a chunk of this reader's own
    protocol, anything else that is not a valid message is a :class:`BadMessage`.
    """
    messages: list[Message | UnknownMessage | BadMessage] = []
    unknown: dict[int, dict[str, Any]] = {}
    bad: list[int] = []
    for i, raw in enumerate(raws):
        if isinstance(raw, BadMessage):
            bad.append(i)
            messages.append(raw)
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
            bad.append(i)
            messages.append(BadMessage("it is not a message (an object with a string `kind`)"))
            continue
        try:
            message = msgspec.convert(raw, AnyMessage)
        except msgspec.ValidationError as exc:
            text = str(exc)
            if "Invalid value" in text and "$.kind" in text:
                messages.append(UnknownMessage(kind=raw["kind"], data=raw, reason="unknown kind"))
            elif newer:
                messages.append(UnknownMessage(kind=raw["kind"], data=raw, reason=text))
            else:
                bad.append(i)
                messages.append(BadMessage(f"its {raw['kind']!r} message is invalid: {text}"))
            continue
        messages.append(message)
        if newer:
            extra = {k: v for k, v in raw.items() if k not in known_fields(message)}
            if extra:
                unknown[i] = extra
    return DecodedChunk(header, messages, unknown or None, tuple(bad))
