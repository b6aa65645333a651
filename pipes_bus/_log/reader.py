"""SessionReader: follows every writer's stream in a session, exactly once, in order.

The rules live in :class:`~pipes_bus._log.core.ReaderCore`; this is its blocking driver: it
answers the core's requests with a transport, on this thread, and prefetches on a
background thread where the store is remote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pipes_bus._log.core import Get, List, Pass, Prefetch, ReaderCore, Request, run
from pipes_bus._log.items import Event, Item, SessionCursor
from pipes_bus._log.schedule import Schedule
from pipes_bus._wire.limits import MiB
from pipes_bus.transports import Transport

__all__ = ["Prefetcher", "SessionReader", "answer"]


class _Fetch:
    """One get running on a background thread."""

    def __init__(self, transport: Transport, get: Get) -> None:
        self.get = get
        self._transport = transport
        self._data: bytes | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pipes-bus-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._data = self._transport.get(self.get.key, max_size=self.get.max_size)
        except BaseException as exc:  # handed to the reader's thread by result()
            self._error = exc

    def result(self) -> bytes | None:
        """The object's bytes (None if it was not there), or what the read raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._data


class Prefetcher:
    """Answers a core's requests with a transport, keeping one prefetch per stream."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._ahead: dict[str, _Fetch] = {}  # by stream: its next chunk, being fetched

    def __call__(self, request: Request) -> Any:
        if type(request) is Get:
            fetch = self._ahead.pop(request.slot, None) if request.slot else None
            if fetch is not None and fetch.get.key == request.key:
                return fetch.result()
            return self.transport.get(request.key, max_size=request.max_size)
        if type(request) is List:
            return self.transport.list(request.prefix, after=request.after)
        assert type(request) is Prefetch
        slot = request.get.slot or request.get.key
        self._ahead[slot] = _Fetch(self.transport, request.get)
        return None


def answer(transport: Transport) -> Callable[[Request], Any]:
    """A plain (no prefetch) answerer of a core's requests."""

    def perform(request: Request) -> Any:
        if type(request) is Get:
            return transport.get(request.key, max_size=request.max_size)
        if type(request) is List:
            return transport.list(request.prefix, after=request.after)
        return None

    return perform


class SessionReader:
    """Reads a session's streams: discovers writers, probes each stream's next chunk.

    :meth:`poll` makes one pass and returns everything available, in order per writer;
    :meth:`follow` polls adaptively until told to stop. Nothing is yielded twice, and
    anything that cannot be delivered is yielded as a
    :class:`~pipes_bus.orchestrator.StreamFault` naming the key.

    With ``expect_opened`` (what sessions use: every worker's stream opens with ``opened``),
    a stream whose first message is another kind gets a ``corrupt`` fault before it.
    ``max_chunk_bytes`` bounds a chunk both as stored and once decompressed (so a
    decompression bomb is a ``corrupt`` fault, not an out-of-memory); ``discover_interval``
    and ``scan_interval`` are in seconds of ``clock``.
    """

    def __init__(
        self,
        transport: Transport,
        session: str,
        *,
        cursor: SessionCursor | None = None,
        key: bytes | None = None,
        max_chunk_bytes: int = 64 * MiB,
        discover_interval: float = 1.0,
        scan_interval: float = 30.0,
        schedule: Schedule | None = None,
        idle_rate: float | None = None,
        expect_opened: bool = False,
        claims: frozenset[str] = frozenset(),
        beats: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.transport = transport
        caps = transport.capabilities
        self.core = ReaderCore(
            session,
            poll=caps.poll,
            idle_rate=caps.idle_rate if idle_rate is None else idle_rate,
            read_ahead=caps.read_ahead,
            cursor=cursor,
            key=key,
            max_chunk_bytes=max_chunk_bytes,
            discover_interval=discover_interval,
            scan_interval=scan_interval,
            schedule=schedule,
            expect_opened=expect_opened,
            claims=claims,
            beats=beats,
        )
        self._clock = clock
        self._perform: Callable[[Request], Any] = (
            Prefetcher(transport) if caps.read_ahead else answer(transport)
        )

    def _run(self, pass_: Pass) -> Any:
        return run(pass_, self._perform, self._clock)

    # --- state (the core's) -------------------------------------------------------------------

    @property
    def session(self) -> str:
        """The session's id."""
        return self.core.session

    @property
    def writers(self) -> list[str]:
        """Every writer seen so far, in discovery order."""
        return self.core.writers

    @property
    def open_writers(self) -> list[str]:
        """Writers whose ``closed`` message has not been read."""
        return self.core.open_writers

    @property
    def behind(self) -> bool:
        """Whether the last pass stopped at a limit with more to read."""
        return self.core.behind

    @property
    def last_error(self) -> Exception | None:
        """The last transient store error (retried on the next pass)."""
        return self.core.last_error

    @property
    def schedule(self) -> Schedule:
        """How each stream's probes back off."""
        return self.core.schedule

    @schedule.setter
    def schedule(self, value: Schedule) -> None:
        self.core.schedule = value

    @property
    def max_poll_bytes(self) -> int:
        """About the most one pass reads before it returns (``behind`` says there is more)."""
        return self.core.max_poll_bytes

    @max_poll_bytes.setter
    def max_poll_bytes(self, value: int) -> None:
        self.core.max_poll_bytes = value

    @property
    def idle_rate(self) -> float:
        """Requests per second an idle session may spend, whatever its writers."""
        return self.core.idle_rate

    def last_event(self, writer: str) -> Event | None:
        """The last message delivered from ``writer``'s stream (in this reader)."""
        return self.core.last_event(writer)

    def cursor(self) -> SessionCursor:
        """A cursor just past everything this reader has returned."""
        return self.core.cursor()

    def wait_time(self) -> float:
        """Seconds until the next probe or listing is due (0 if one is due now)."""
        return self.core.wait_time(self._clock())

    # --- reading --------------------------------------------------------------------------------

    def poll(
        self,
        *,
        discover: bool | None = None,
        limit: int | None = 65536,
        due_only: bool = False,
    ) -> list[Item]:
        """One pass over the session; everything available now, in order per writer.

        By default every open stream is probed, and the session is listed for new
        writers every ``discover_interval`` (every poll until a writer appears).
        With ``due_only`` (what :meth:`follow` and sessions use), each stream is probed on
        its own adaptive schedule and listing backs off too, so an idle session costs at
        most ``idle_rate`` requests per second. ``discover=True`` lists and probes
        everything now. With ``limit``, the pass stops at the first chunk boundary past
        that many items and :attr:`behind` is True until a pass reads everything there was.
        """
        items: list[Item] = self._run(
            self.core.poll(self._clock(), discover=discover, limit=limit, due_only=due_only)
        )
        return items

    def discover(self, out: list[Item] | None = None) -> list[str]:
        """List the session's streams; return writers not seen before."""
        found: list[str] = self._run(self.core.discover(self._clock(), out))
        return found

    def scan(self) -> list[Item]:
        """Look for gaps and strangers in every open stream by listing it (costs a LIST each)."""
        items: list[Item] = self._run(self.core.scan(self._clock()))
        return items

    def verify(self, writers: list[str]) -> list[Item]:
        """Before ``writers`` are declared lost: probe their streams and read their beats
        again (see :meth:`ReaderCore.verify`)."""
        items: list[Item] = self._run(self.core.verify(self._clock(), writers))
        return items

    def follow(
        self,
        *,
        until: Callable[[], bool] | None = None,
        schedule: Schedule | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[Item]:
        """Poll adaptively and yield items as they arrive.

        Stops after a final full pass once ``until()`` is true (checked after each poll),
        or when every discovered writer has closed if ``until`` is None.
        """
        if schedule is not None:
            self.schedule = schedule
        while True:
            batch = self.poll(due_only=True)
            yield from batch
            done = until() if until is not None else bool(self.writers) and not self.open_writers
            if done:
                # A full pass: poll() stops at its item limit, so go on until nothing is left.
                yield from self.poll(discover=True)
                while self.behind:
                    yield from self.poll(discover=True)
                return
            if not self.behind:
                sleep(self.wait_time())
