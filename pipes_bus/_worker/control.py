"""A worker's side of the control channel: it watches for a cancel request, and leaves a
beat whenever it has been quiet for its heartbeat interval.

One daemon thread per worker. Each look at the cancel request is one GET of a key that
does not exist until someone cancels; each beat is one tiny put-if-absent (and the delete
of the writer's previous beat, so that a session holds one per writer). The orchestrator
tells a quiet writer from a dead one by its beats, without access to its host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from pipes_bus._errors import PipesBusError
from pipes_bus._wire.control import MAX_CONTROL_BYTES, Beat, CancelRequest, sign, verify
from pipes_bus._wire.keys import beat_key, cancel_key
from pipes_bus.transports import Transport

__all__ = ["Control"]

_log = logging.getLogger("pipes_bus")
# The reason of a cancel request that is there but cannot be read: a cancel all the same
# (whoever can write the key can stop the writers anyway).
UNREADABLE = "(the cancel request could not be read)"
_CANCEL = msgspec.json.Decoder(CancelRequest)
_ENCODE = msgspec.json.Encoder()
# A chunk published after this many quiet seconds comes with a wake beat: by then a
# follower probes the stream less often than the beats feed it lists (see ReaderCore).
WAKE_AFTER = 2.0


class Control:
    """Watches ``{session}/control/cancel`` and leaves beats for one writer.

    ``writer`` is the worker's :class:`~pipes_bus.log.ChunkWriter`; ``heartbeat`` the most
    seconds it stays silent (None: no beats); ``check`` how often the cancel request is
    looked for; ``on_cancel`` is called once, on this thread, with the request.
    """

    def __init__(
        self,
        transport: Transport,
        session: str,
        writer: Any,
        *,
        heartbeat: float | None,
        check: float,
        on_cancel: Callable[[CancelRequest], None],
        key: bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        self.session = session
        self.writer = writer
        self.heartbeat = heartbeat
        self.check = check
        self.on_cancel = on_cancel
        self.key = key
        self._clock = clock
        self._stop = threading.Event()
        self._beat_at = clock()
        self._last_beat: str | None = None
        self._beating = threading.Lock()
        self.beats = 0
        self.cancel: CancelRequest | None = None
        self._warned = False
        self._thread = threading.Thread(
            target=self._run, name=f"pipes-bus-control-{writer.writer}", daemon=True
        )

    def start(self) -> Control:
        """Start watching; leave a wake beat whenever the writer publishes after a quiet
        spell, so that a follower that probes quiet streams rarely hears it at once."""
        if self.heartbeat is not None:
            self.writer.on_published = self._published
        self._thread.start()
        return self

    def _published(self, quiet: float) -> None:
        if quiet < WAKE_AFTER:
            return
        try:
            self.beat(wake=True)
        except PipesBusError as exc:  # the chunk is out: a lost wake costs latency only
            if not self._warned:
                self._warned = True
                _log.warning("pipes_bus control channel: %s", exc)

    def stop(self) -> None:
        """Stop watching (the writer is closing)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.cancel is None and self._look_for_cancel():
                    return
                self._beat_if_quiet()
            except PipesBusError as exc:
                # A store failure here is retried at the next look; say so once.
                if not self._warned:
                    self._warned = True
                    _log.warning("pipes_bus control channel: %s", exc)
            self._stop.wait(self._next_wait())

    def _next_wait(self) -> float:
        wait = self.check
        if self.heartbeat is not None:
            quiet_since = max(self.writer.published_at, self._beat_at)
            wait = min(wait, max(0.0, quiet_since + self.heartbeat - self._clock()))
        return max(0.01, wait)

    def _look_for_cancel(self) -> bool:
        try:
            data = self.transport.get(cancel_key(self.session), max_size=MAX_CONTROL_BYTES)
        except PipesBusError as exc:
            if getattr(exc, "reason", None) is None:
                raise
            data = b""  # something unreadable sits there (too large, a FIFO): a cancel
        if data is None:
            return False
        try:
            request = _CANCEL.decode(data)
        except (msgspec.DecodeError, RecursionError):
            request = CancelRequest(reason=UNREADABLE)
        if not verify(self.key, request):
            return False  # a signed session ignores unsigned requests
        self.cancel = request
        self.on_cancel(request)
        return True

    def _beat_if_quiet(self) -> None:
        if self.heartbeat is None or self.writer.closed:
            return
        now = self._clock()
        if now - max(self.writer.published_at, self._beat_at) < self.heartbeat:
            return
        self.beat()

    def beat(self, *, wake: bool = False) -> None:
        """Leave a beat now: the writer's position, on its own clock."""
        with self._beating:  # the control thread (quiet) and the writer's (wake) both beat
            self._beat(wake)

    def _beat(self, wake: bool) -> None:
        wall = time.time()
        beat = Beat(
            writer=self.writer.writer,
            seq=self.writer.delivered,
            chunk=self.writer.next_chunk,
            time=wall,
            wake=wake,
        )
        if self.key is not None:
            beat = sign(self.key, beat)
        self._beat_at = self._clock()
        key = beat_key(self.session, self.writer.writer, int(wall * 1000), wake=wake)
        if not self.transport.put_if_absent(key, _ENCODE.encode(beat)):
            return
        self.beats += 1
        previous, self._last_beat = self._last_beat, key
        if previous is not None:
            with contextlib.suppress(PipesBusError):
                self.transport.delete(previous)  # the newest one is all a reader needs
