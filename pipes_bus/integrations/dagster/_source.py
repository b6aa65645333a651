"""The Dagster Pipes source: unmodified Dagster Pipes workers heard in a pipes_bus session.

A session made with the default sources injects ``DAGSTER_PIPES_CONTEXT`` and
``DAGSTER_PIPES_MESSAGES`` and reads what a Dagster worker writes there:

- the default message writer's JSON Lines file (``{"path": ...}``): on a directory bus,
  ``{session}/dagster/messages.jsonl``, else a private temporary file. Only complete
  lines are consumed; a half-written line waits for its end, and one longer than the limit
  is skipped and reported;
- the blob-store writers' ``{key_prefix}/{n}.json`` chunks (``{"bucket", "key_prefix"}``),
  under ``{session}/streams/_dagster/messages/`` when the bus is on S3, GCS or Azure. Every
  available chunk is read on every poll, in order.

The source is dormant until a Dagster worker has written something: the file is a local
stat at the session's own wake-ups, and the chunks' folder shows up in the listing of
``{session}/streams/`` that the session makes anyway. A session with no Dagster worker
makes no request and no wake-up for it. In a signed session nothing is injected, and
whatever appears is reported as ``unauthenticated``, never delivered: Dagster Pipes
messages carry no signature.

Each place is one writer stream (``dagster-file``, ``dagster-blob``); ``seq`` is the
message's index in it. A line that is not a Dagster message becomes a fault naming the file
or key and the line, and reading carries on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError, ObjectTooLargeError, StoreError
from pipes_bus._log.items import Event, SessionCursor, StreamFault
from pipes_bus._log.schedule import Schedule
from pipes_bus._orchestrator.sources import MessageSource, SourceSession
from pipes_bus._wire.bootstrap import Context
from pipes_bus._wire.limits import MAX_NESTING, MiB, json_too_deep
from pipes_bus._wire.objects import put_object
from pipes_bus._wire.schema import Closed, Opened
from pipes_bus.integrations.dagster._translate import (
    CONTEXT_ENV,
    INLINE_CONTEXT_LIMIT,
    MESSAGES_ENV,
    context_data,
    encode_param,
    message_from_dagster,
)
from pipes_bus.transports import Transport

__all__ = ["BLOB_WRITER", "CLAIM", "FILE_WRITER", "DagsterPipesSource", "dagster_source"]

FILE_WRITER = "dagster-file"
BLOB_WRITER = "dagster-blob"
# The entry of {session}/streams/ where Dagster workers write; not a writer id, claimed by
# this source.
CLAIM = "_dagster"
MESSAGES_FILE = "messages.jsonl"
CHUNKS_DIR = "messages"
# Dagster's blob stores, by bus URL scheme: their writers take {"bucket", "key_prefix"}.
BLOB_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


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
        # Backs off while nothing comes (Dagster's writers upload every ~11 s at best), so
        # an idle session's probes here cost at most one request per 30 s.
        self.schedule = Schedule(probe_interval, max(probe_interval, 30.0), 1.5)
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
        return self._probed_at + self.schedule.current

    def poll(self, out: list[Any], final: bool) -> None:
        now = self._clock()
        if (
            not final
            and self._probed_at is not None
            and now - self._probed_at < self.schedule.current
        ):
            return
        self._probed_at = now
        before = self.next
        try:
            self._read(out, final)
        finally:
            self.schedule.next(self.next != before)

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

    ``env()`` holds ``DAGSTER_PIPES_CONTEXT`` (the session's context inline, as
    ``{"data": ...}``, or as an object when too large) and ``DAGSTER_PIPES_MESSAGES``
    (``{"path"}``, plus ``{"bucket", "key_prefix"}`` on a blob-store bus: each Dagster
    writer takes the keys it knows). ``poll()`` reads both places, once there is something
    there. ``inject=False`` only reads (a session followed from elsewhere), ``cursor`` skips
    what a previous follower delivered, ``trusted=False`` (signed sessions) reports
    everything found as ``unauthenticated`` and injects nothing.
    """

    claims = CLAIM

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
        self._polls = Schedule(poll_interval[0], poll_interval[1], 1.5)
        self._due = clock()
        self.session = session
        self.context = context or Context(run_id=session)
        self.include_stdio = include_stdio
        self._env: dict[str, str] | None = None
        self._tempdir: str | None = None
        self._dir = f"{session}/streams/{CLAIM}"
        skips = {w: c.seq for w, c in (cursor.streams.items() if cursor else ())}
        self._file_stream = _Stream(FILE_WRITER, skips.get(FILE_WRITER, 0), trusted=trusted)
        self._blob_stream = _Stream(BLOB_WRITER, skips.get(BLOB_WRITER, 0), trusted=trusted)
        # A signed session hands Dagster workers no variables: they could only report
        # unauthenticated, and what appears anyway is reported, never delivered.
        inject = inject and trusted
        root = _local_root(transport)
        if root is not None:
            # Beside the streams: the file is found by a local stat, not by listing.
            path: str | None = os.path.join(root, session, "dagster", MESSAGES_FILE)
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
                path, self._file_stream, max_read=max_read, tail_timeout=tail_timeout, clock=clock
            )
            if path is not None
            else None
        )
        self._blob = _blob_location(transport.url)
        # Chunks are only where blob-store writers are told to write, and read once the
        # session's listing shows their folder; read_chunks=True reads them always.
        self._read_chunks = self._blob is not None if read_chunks is None else read_chunks
        self._always_chunks = read_chunks is True
        self._chunks = _ChunkReader(
            transport,
            f"{self._dir}/{CHUNKS_DIR}",
            self._blob_stream,
            max_chunk_bytes=max_chunk_bytes,
            probe_interval=probe_interval,
            clock=clock,
        )
        self._inject = inject
        self._woken = self._always_chunks
        self._file_seen = False

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
        """The ``DAGSTER_PIPES_CONTEXT`` params: the context inline, or an object if too large."""
        data = context_data(self.context)
        if len(encode_param({"data": data})) <= INLINE_CONTEXT_LIMIT:
            return {"data": data}
        # Beside the streams, not in them: a large context must not wake this source.
        key = f"{self.session}/dagster-context.json"
        put_object(self.transport, key, json.dumps(data).encode("utf-8"), what="Dagster context")
        root = _local_root(self.transport)
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

    # --- dormancy ----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a Dagster worker has written anything yet (its file, or its chunks)."""
        if not self._file_seen and self.path is not None:
            self._file_seen = os.path.lexists(self.path)
        return self._file_seen or (self._woken and self._read_chunks)

    def wake(self) -> None:
        self._woken = True

    # --- what the worker wrote -----------------------------------------------------------

    def poll(self, *, final: bool = False) -> list[Event | StreamFault]:
        out: list[Event | StreamFault] = []
        if self._file is not None and (self._file_seen or self.active):
            self._file.poll(out, final)
        if self._read_chunks and (self._woken or final):
            self._chunks.poll(out, final)
        # Fast while messages flow, backing off to the slowest (a local stat) when idle.
        self._due = self._clock() + self._polls.next(bool(out))
        return out

    def wait_time(self) -> float:
        """Seconds until this source would like to be polled again (0 if now)."""
        if not self.active:
            return float("inf")
        due = self._due if self._file_seen else float("inf")
        if self._read_chunks and self._woken:
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


def dagster_source(info: SourceSession) -> DagsterPipesSource:
    """The Dagster Pipes source of a session (the ``dagster`` entry of ``pipes_bus.sources``)."""
    return DagsterPipesSource(
        info.transport,
        info.session,
        context=info.context,
        inject=info.launching,
        include_stdio=info.capture_output,
        cursor=info.cursor,
        trusted=not info.signed,
        clock=info.clock,
    )
