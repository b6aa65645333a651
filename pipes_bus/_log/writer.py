"""ChunkWriter: one writer's stream, buffered, flushed in the background, never lossy."""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipes_bus._errors import (
    BufferFullError,
    ConfigurationError,
    DeliveryError,
    EncodeError,
    MessageTooLargeError,
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    UnreadableObjectError,
    WriterClosedError,
    translate_store_error,
)
from pipes_bus._log.schedule import RetryPolicy
from pipes_bus._wire import keys as _keys
from pipes_bus._wire.chunk import build_chunk
from pipes_bus._wire.limits import MAX_NESTING, MiB, json_too_deep, value_too_deep
from pipes_bus._wire.schema import Closed, ExceptionInfo, Message
from pipes_bus.transports import Transport

__all__ = ["ChunkWriter", "WriterSettings"]

_log = logging.getLogger("pipes_bus")
# How many occupied keys a writer steps over before it calls the stream hijacked.
_MAX_FOREIGN_SKIPS = 64


@dataclass(frozen=True)
class WriterSettings:
    """How a writer batches and retries. ``None`` means "the transport's default".

    ``chunk_bytes``: seal a chunk once its body reaches this size.
    ``linger``: seal a chunk once its first message is this old (seconds).
    ``max_buffer_bytes``: memory bound for buffered plus unpublished messages.
    ``on_full``: "block" the caller until there is room, or "raise" BufferFullError.
    ``max_message_bytes``: largest single encoded message.
    ``heartbeat``: the most seconds a worker stays silent (it leaves a beat when quiet that
    long; 0 for none); ``cancel_check``: seconds between its looks for a cancel request.
    Both are the worker's (:func:`pipes_bus.open_worker`), not the log's.
    """

    encoding: str = "jsonl"
    compression: str | None = None
    chunk_bytes: int = 4 * MiB
    linger: float | None = None
    max_buffer_bytes: int = 32 * MiB
    on_full: str = "block"
    max_message_bytes: int = 8 * MiB
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    heartbeat: float | None = None
    cancel_check: float | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("jsonl", "msgpack"):
            raise ConfigurationError(
                f"encoding must be 'jsonl' or 'msgpack', not {self.encoding!r}."
            )
        if self.compression not in (None, "gzip", "zlib", "bz2", "lzma"):
            raise ConfigurationError(
                "compression must be one of gzip, zlib, bz2, lzma or None, "
                f"not {self.compression!r}."
            )
        if self.on_full not in ("block", "raise"):
            raise ConfigurationError(f"on_full must be 'block' or 'raise', not {self.on_full!r}.")
        if self.chunk_bytes <= 0 or self.max_buffer_bytes < self.chunk_bytes:
            raise ConfigurationError("Need 0 < chunk_bytes <= max_buffer_bytes.")
        if self.heartbeat is not None and not self.heartbeat >= 0:
            raise ConfigurationError(
                f"heartbeat must be seconds (0 for none), not {self.heartbeat!r}."
            )
        if self.cancel_check is not None and not self.cancel_check > 0:
            raise ConfigurationError(
                f"cancel_check must be seconds above 0, not {self.cancel_check!r}."
            )


class _Sealed:
    __slots__ = ("body", "count", "final", "first", "size")

    def __init__(
        self, first: int, count: int, body: bytes | bytearray, final: bool, size: int
    ) -> None:
        self.first = first
        self.count = count
        self.body = body
        self.final = final
        self.size = size  # bytes it holds of the writer's memory account (``_pending``)


class ChunkWriter:
    """Appends messages to one writer's stream in a session.

    :meth:`write` encodes at the call site (so a bad payload fails there and nothing
    else is affected) and buffers; a background thread seals chunks on size, on age
    and on :meth:`flush`, and publishes them in order with put-if-absent, retrying
    transient store errors. A permanent failure is raised by the next call and by
    :meth:`close`, naming the messages that were not delivered.
    """

    def __init__(
        self,
        transport: Transport,
        session: str,
        writer: str,
        settings: WriterSettings | None = None,
        *,
        key: bytes | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.session = _keys.validate_id("session id", session)
        self.writer = _keys.validate_id("writer id", writer)
        self.settings = settings = settings or WriterSettings()
        self._linger = transport.capabilities.linger if settings.linger is None else settings.linger
        self._key = key
        self._sleep = sleep
        self._clock = clock
        self._encoder: Any = (
            msgspec.json.Encoder() if settings.encoding == "jsonl" else msgspec.msgpack.Encoder()
        )
        self._encode_into = self._encoder.encode_into
        self._jsonl = settings.encoding == "jsonl"
        # A message this short cannot nest too deep: each level takes at least two bytes
        # of JSON ("[]"), one of MessagePack.
        self._short = 2 * MAX_NESTING if self._jsonl else MAX_NESTING
        # Read on every write: kept as plain attributes.
        self._chunk_bytes = settings.chunk_bytes
        self._max_buffer = settings.max_buffer_bytes
        self._max_message = settings.max_message_bytes
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._buf = bytearray()
        self._buf_first = 0
        self._buf_since = 0.0
        self._sealed: collections.deque[_Sealed] = collections.deque()
        self._pending = 0  # bytes buffered or sealed but not yet published
        self._next_seq = 0
        self._published = 0  # messages published (all seq < this are on the store)
        self._next_chunk = 0
        self._flush_requested = False
        self._closing = False
        self._closed = False
        self._error: DeliveryError | None = None
        self.chunks_published = 0
        self._published_at = clock()
        #: Called in the writer's thread after each chunk is published, with the seconds
        #: the writer had been quiet before it (the worker's control leaves a wake beat).
        self.on_published: Callable[[float], None] | None = None
        self.bytes_published = 0
        self._thread = threading.Thread(
            target=self._run, name=f"pipes-bus-writer-{writer}", daemon=True
        )
        self._thread.start()

    # --- caller side --------------------------------------------------------------------

    def write(self, message: Message) -> int:
        """Buffer ``message``; return its index in the stream.

        Raises EncodeError (nothing written), BufferFullError (with on_full="raise"),
        DeliveryError (an earlier chunk failed for good) or WriterClosedError.
        """
        # acquire/release: cheaper than `with` on this path, which every message takes.
        lock = self._lock
        lock.acquire()
        try:
            if self._error is not None or self._closing:
                self._raise_unusable()
            if self._pending >= self._max_buffer:
                self._wait_for_room()
                # The lock was let go while waiting: close() may have sealed the stream.
                if self._error is not None or self._closing:
                    self._raise_unusable()
            buf = self._buf
            start = len(buf)
            try:
                self._encode_into(message, buf, -1)
            except BaseException as exc:
                # Whatever failed (a type msgspec refuses, a tzinfo that raises, a
                # KeyboardInterrupt), nothing of this message may stay in the buffer.
                del buf[start:]
                if not isinstance(exc, Exception):
                    raise
                reason = (
                    f"it is nested deeper than {MAX_NESTING} levels"
                    if isinstance(exc, RecursionError)
                    else f"{type(exc).__name__}: {exc}"
                )
                raise EncodeError(
                    f"Cannot encode {type(message).__name__} message: {reason}. "
                    "Nothing was written for it; earlier messages are unaffected."
                ) from exc
            if self._jsonl:
                buf.append(10)
            end = len(buf)
            size = end - start
            if size > self._max_message:
                del buf[start:]
                raise MessageTooLargeError(
                    f"A {type(message).__name__} message encodes to {size} bytes, over "
                    f"the {self._max_message}-byte limit. Nothing was written for it; store "
                    "large data elsewhere and report its location."
                )
            if size > self._short and self._too_deep(buf, start, end):
                del buf[start:]
                raise EncodeError(
                    f"A {type(message).__name__} message is nested deeper than {MAX_NESTING} "
                    "levels of arrays and objects, which readers refuse. Nothing was written "
                    "for it; flatten the payload or send it as a string."
                )
            seq = self._next_seq
            self._next_seq = seq + 1
            self._pending += end - start
            if start == 0:
                self._buf_first = seq
                self._buf_since = self._clock()
                self._cond.notify()
            if end >= self._chunk_bytes:
                self._seal(final=False)
                self._cond.notify()
            return seq
        finally:
            lock.release()

    def flush(self) -> None:
        """Publish everything written so far; raise DeliveryError if that failed."""
        with self._lock:
            if self._error is not None:
                raise self._error
            target = self._next_seq
            self._flush_requested = True
            self._cond.notify_all()
            while self._published < target and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error

    def close(self, exception: BaseException | ExceptionInfo | None = None) -> None:
        """Write the ``closed`` message, publish everything and stop.

        Raises DeliveryError if anything could not be delivered. Closing twice is a no-op.
        """
        info = (
            ExceptionInfo.from_exception(exception)
            if isinstance(exception, BaseException)
            else exception.bounded()
            if exception is not None
            else None
        )
        with self._lock:
            if self._closed or self._closing:
                if self._error is not None:
                    raise self._error
                return
            if self._error is None:
                start = len(self._buf)
                self._encode_closed(info)
                if start == 0:
                    self._buf_first = self._next_seq
                self._pending += len(self._buf) - start
                self._next_seq += 1
                self._seal(final=True)
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        with self._lock:
            self._closed = True
            if self._error is not None:
                raise self._error

    @property
    def closed(self) -> bool:
        """Whether close() has finished."""
        return self._closed

    @property
    def error(self) -> DeliveryError | None:
        """The permanent failure that stopped this writer, if any."""
        return self._error

    @property
    def written(self) -> int:
        """Messages accepted so far (the next message's index)."""
        return self._next_seq

    @property
    def delivered(self) -> int:
        """Messages published to the store so far."""
        return self._published

    @property
    def published_at(self) -> float:
        """When (on this writer's clock) a chunk was last published, or the writer made."""
        return self._published_at

    @property
    def next_chunk(self) -> int:
        """The number the next chunk will take."""
        return self._next_chunk

    def __repr__(self) -> str:
        where = self.transport.describe(_keys.stream_prefix(self.session, self.writer))
        return f"<ChunkWriter {where}>"

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        """Close, with the exception that left the block (if any) in ``closed``."""
        self.close(exc)

    # --- internals (call with the lock held) --------------------------------------------

    def _too_deep(self, buf: bytearray, start: int, end: int) -> bool:
        if self._jsonl:
            view = memoryview(buf)[start:end]
            try:
                return json_too_deep(view, exact=False) and json_too_deep(view)
            finally:
                view.release()
        return value_too_deep(msgspec.msgpack.decode(bytes(buf[start:end])))

    def _encode_closed(self, info: ExceptionInfo | None) -> None:
        buf = self._buf
        start = len(buf)
        message = Closed(time=time.time(), count=self._next_seq, exception=info)
        try:
            self._encoder.encode_into(message, buf, -1)
        except (TypeError, ValueError, msgspec.EncodeError):
            # Text that cannot be encoded (a lone surrogate from a file name, say) must not
            # cost the stream its end: send the exception with such characters escaped.
            del buf[start:]
            assert info is not None
            self._encoder.encode_into(
                msgspec.structs.replace(message, exception=_escaped(info)), buf, -1
            )
        if self._jsonl:
            buf.append(10)

    def _raise_unusable(self) -> None:
        if self._error is not None:
            raise self._error
        raise WriterClosedError(f"Cannot write to {self!r}: it has been closed. Open a new writer.")

    def _wait_for_room(self) -> None:
        if self.settings.on_full == "raise":
            raise BufferFullError(
                f"{self!r} holds {self._pending} unpublished bytes, its limit "
                f"({self.settings.max_buffer_bytes}); the store is not keeping up. "
                "Retry later, or use on_full='block'."
            )
        if self._buf:
            self._seal(final=False)
            self._cond.notify_all()
        while self._pending >= self.settings.max_buffer_bytes and self._error is None:
            self._cond.wait()
        if self._error is not None:
            raise self._error

    def _seal(self, *, final: bool) -> None:
        count = self._next_seq - self._buf_first
        body: bytes | bytearray = self._buf
        if not self._jsonl:
            body = b"\xdd" + count.to_bytes(4, "big") + bytes(body)
        self._sealed.append(_Sealed(self._buf_first, count, body, final, len(self._buf)))
        self._buf = bytearray()
        self._buf_first = self._next_seq

    # --- background publisher -----------------------------------------------------------

    def _next_sealed(self) -> _Sealed | None:
        with self._lock:
            while True:
                if self._sealed:
                    return self._merge_queued(self._sealed.popleft())
                if self._buf:
                    age = self._clock() - self._buf_since
                    if self._flush_requested or self._closing or age >= self._linger:
                        self._seal(final=False)
                        continue
                    self._cond.wait(self._linger - age)
                    continue
                self._flush_requested = False
                if self._closing:
                    return None
                self._cond.wait()

    def _merge_queued(self, sealed: _Sealed) -> _Sealed:
        # When the store is slower than the linger (high latency, a burst of small seals),
        # publish what queued up as one chunk: latency stays near one request, not a queue.
        limit = self.settings.chunk_bytes
        while self._sealed and len(sealed.body) + len(self._sealed[0].body) <= limit:
            nxt = self._sealed.popleft()
            if self._jsonl:
                body: bytes | bytearray = bytes(sealed.body) + bytes(nxt.body)
            else:
                items = bytes(sealed.body[5:]) + bytes(nxt.body[5:])
                body = b"\xdd" + (sealed.count + nxt.count).to_bytes(4, "big") + items
            sealed = _Sealed(
                sealed.first, sealed.count + nxt.count, body, nxt.final, sealed.size + nxt.size
            )
        return sealed

    def _run(self) -> None:
        while True:
            sealed = self._next_sealed()
            if sealed is None:
                return
            try:
                self._publish(sealed)
            except BaseException as exc:
                with self._lock:
                    last = self._next_seq - 1
                    where = self.transport.describe(_keys.stream_prefix(self.session, self.writer))
                    error = DeliveryError(
                        f"{last - sealed.first + 1} messages (indices {sealed.first}..{last}) "
                        f"were not delivered to {where}: {exc}",
                        first=sealed.first,
                        last=last,
                    )
                    error.__cause__ = exc
                    self._error = error
                    self._sealed.clear()
                    self._buf = bytearray()
                    self._pending = 0
                    self._cond.notify_all()
                _log.error("%s", error)
                return
            with self._lock:
                now = self._clock()
                quiet, self._published_at = now - self._published_at, now
                self._published = sealed.first + sealed.count
                self._pending -= sealed.size
                self._cond.notify_all()
            if self.on_published is not None:
                self.on_published(quiet)

    def _publish(self, sealed: _Sealed) -> None:
        body = sealed.body  # never mutated after sealing: no copy needed
        for _ in range(_MAX_FOREIGN_SKIPS):
            number = self._next_chunk
            key = _keys.chunk_key(self.session, self.writer, number)
            data = build_chunk(
                writer=self.writer,
                chunk=number,
                first=sealed.first,
                count=sealed.count,
                body=body,
                encoding=self.settings.encoding,
                compression=self.settings.compression,
                final=sealed.final,
                key=self._key,
            )
            created = self._put(key, data)
            self._next_chunk = number + 1
            if created:
                self.chunks_published += 1
                self.bytes_published += len(data)
                return
            _log.warning(
                "%s holds an object this writer did not write; writing to the next key.",
                self.transport.describe(key),
            )
        raise PermanentStoreError(
            f"{_MAX_FOREIGN_SKIPS} keys in a row in "
            f"{self.transport.describe(_keys.stream_prefix(self.session, self.writer))} were "
            "taken by objects this writer did not write; something else writes to this stream.",
            url=self.transport.url,
        )

    def _put(self, key: str, data: bytes) -> bool:
        """Put-if-absent with retries: True if ``data`` is now at ``key``, False if another is."""
        try:
            return self._put_once(key, data)
        except TransientStoreError:
            if self.settings.retry.attempts == 1:
                raise
            # Retried below, with the policy's backoff (tenacity loads only now).
        policy = self.settings.retry
        self._sleep(random.uniform(0, min(policy.initial, policy.maximum)))
        retrying = policy.retrying(self._sleep, made=1)
        try:
            return self._put_retrying(retrying, key, data)
        except TransientStoreError as exc:
            stats = retrying.statistics
            raise TransientStoreError(
                f"{exc} Gave up after {stats.get('attempt_number', 1) + 1} attempts over "
                f"{stats.get('delay_since_first_attempt', 0.0):.1f} s (the retry policy: "
                f"{self.settings.retry.describe()}).",
                url=exc.url,
                key=exc.key,
            ) from exc

    def _put_retrying(self, retrying: Any, key: str, data: bytes) -> bool:
        for attempt in retrying:
            with attempt:
                return self._put_once(key, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _put_once(self, key: str, data: bytes) -> bool:
        try:
            if self.transport.put_if_absent(key, data):
                return True
            # Taken: by our own earlier attempt whose answer was lost, or by a stranger.
            existing = self.transport.get(key, max_size=len(data))
        except UnreadableObjectError:
            return False  # too large or not an object at all: not ours
        except StoreError:
            raise
        except Exception as exc:
            raise translate_store_error(exc, url=self.transport.url, key=key, op="write") from exc
        if existing is None:
            raise TransientStoreError(
                f"{self.transport.describe(key)} was reported taken, then missing.",
                url=self.transport.url,
                key=key,
            )
        return existing == data


def _escaped(info: ExceptionInfo) -> ExceptionInfo:
    """``info`` with every character UTF-8 cannot carry written as an escape."""

    def text(value: str) -> str:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")

    return ExceptionInfo(
        type=text(info.type),
        message=text(info.message),
        stack=[text(line) for line in info.stack],
        cause=_escaped(info.cause) if info.cause is not None else None,
        context=_escaped(info.context) if info.context is not None else None,
    )
