"""The asyncio session: the same core as :class:`~pipes_bus.orchestrator.Session`, awaited.

An asyncio program (an Airflow trigger, a Prefect flow, a FastAPI app, a Temporal worker)
follows any number of sessions from one event loop, with no thread per session: a
session's store requests run on the loop's shared executor (or natively, where a transport
offers ``aget``/``alist`` coroutines), and its waits are ``asyncio.sleep``::

    async with AsyncSession(bus) as session:
        proc = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, **session.env})
        async for event in session.follow(done=lambda: proc.returncode is not None):
            ...
        result = await session.wait()
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pipes_bus._errors import ConfigurationError
from pipes_bus._log.core import Get, List, Pass, Prefetch, Request
from pipes_bus._log.items import Event, Item, SessionCursor, StreamFault
from pipes_bus._orchestrator.core import Hand, Poll, Scan, Verify, Wait
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._orchestrator.session import _Base
from pipes_bus._wire.control import CancelRequest
from pipes_bus.transports import Transport

__all__ = ["AsyncSession"]


class _Answers:
    """Answers a reader core's requests without blocking the loop."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._ahead: dict[str, tuple[str, asyncio.Task[Any]]] = {}
        aget = getattr(transport, "aget", None)
        alist = getattr(transport, "alist", None)
        self._aget: Callable[..., Awaitable[Any]] | None = aget
        self._alist: Callable[..., Awaitable[Any]] | None = alist

    async def _get(self, get: Get) -> Any:
        if self._aget is not None:
            return await self._aget(get.key, max_size=get.max_size)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: self.transport.get(get.key, max_size=get.max_size)
        )

    async def __call__(self, request: Request) -> Any:
        if type(request) is Get:
            slot = self._ahead.pop(request.slot, None) if request.slot else None
            if slot is not None and slot[0] == request.key:
                return await slot[1]
            return await self._get(request)
        if type(request) is List:
            if self._alist is not None:
                return await self._alist(request.prefix, after=request.after)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None, lambda: self.transport.list(request.prefix, after=request.after)
            )
        assert type(request) is Prefetch
        get = request.get
        self._ahead[get.slot or get.key] = (get.key, asyncio.ensure_future(self._get(get)))
        return None


async def arun(
    pass_: Pass, perform: Callable[[Request], Awaitable[Any]], clock: Callable[[], float]
) -> Any:
    """Drive a reader pass with awaited I/O (see :func:`pipes_bus._log.core.run`)."""
    try:
        request = next(pass_)
        while True:
            try:
                outcome: Any = await perform(request)
            except Exception as exc:  # the core decides what each failure means
                outcome = exc
            request = pass_.send((outcome, clock()))
    except StopIteration as stop:
        return stop.value


class AsyncSession(_Base):
    """A session followed from an asyncio event loop.

    It takes the options of :class:`~pipes_bus.orchestrator.Session` (``sleep`` is not used:
    waits are ``asyncio.sleep``). Enter it (``async with``) or ``await session.open()``
    before using ``env``; :meth:`aclose` releases the transport.
    """

    async def open(self) -> AsyncSession:
        """Write the manifest, inject the context, make the launch environment (once)."""
        if not self._opened:
            await asyncio.get_running_loop().run_in_executor(None, self._open_io)
            self._opened = True
            self._answers = _Answers(self.transport)
        return self

    def _require_open(self) -> None:
        if not self._opened:
            raise ConfigurationError(
                f"{self!r} is not open yet: `await session.open()` or `async with` it first."
            )

    @classmethod
    async def attach(
        cls,
        transport: Transport,
        session_id: str,
        *,
        cursor: SessionCursor | None = None,
        key: bytes | None = None,
        collect: bool = True,
        grace: float = 10.0,
        liveness: float | None = None,
    ) -> AsyncSession:
        """Follow a session that is already running (see :meth:`Session.attach`)."""
        following = cls._following(
            transport, session_id, cursor, key, collect=collect, grace=grace, liveness=liveness
        )
        return await following.open()

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to the launched work's environment."""
        self._require_open()
        return self._env

    @property
    def args(self) -> list[str]:
        """Arguments to append to the launched command (with the argv injector)."""
        self._require_open()
        return self._args

    async def __aenter__(self) -> AsyncSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def cancel(self, reason: str | None = None, *, source: str = "api") -> CancelRequest:
        """Ask every writer of the session to stop (see :meth:`Session.cancel`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._cancel, reason, source)

    async def aclose(self) -> None:
        """Record how the session ended (if it was followed to its end), and release the
        transport and any extra sources."""
        loop = asyncio.get_running_loop()
        if self._opened and self._core is not None:
            await loop.run_in_executor(None, self._record_end)
        for source in self._made_sources:
            source.close()
        if self._transport is not None:
            await loop.run_in_executor(None, self._transport.close)

    async def follow(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> AsyncIterator[Event | StreamFault]:
        """Yield events live until the session is complete (see :meth:`Session.follow`)."""
        advance = self.cursor.advance
        async for batch in self._batches(done, grace, settle):
            for item in batch:
                if type(item) is Event:
                    advance(item)
                yield item

    async def batches(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> AsyncIterator[list[Event | StreamFault]]:
        """Like :meth:`follow`, one poll's worth at a time."""
        cursor = self.cursor
        async for batch in self._batches(done, grace, settle):
            for event in self.core.last_in_batch.values():
                cursor.advance(event)
            yield batch

    async def wait(
        self,
        *,
        done: Callable[[], bool] | None = None,
        grace: float | None = None,
        settle: float | None = None,
    ) -> SessionResult:
        """Follow the session to completion and return its result."""
        async for _ in self.batches(done=done, grace=grace, settle=settle):
            pass
        return self.result

    async def _batches(
        self, done: Callable[[], bool] | None, grace: float | None, settle: float | None
    ) -> AsyncIterator[list[Item]]:
        await self.open()
        steps = self.core.follow(
            done,
            self.grace if grace is None else grace,
            self.settle if settle is None else settle,
            self._clock(),
        )
        try:
            action = next(steps)
            while True:
                outcome: Any = None
                if type(action) is Poll:
                    outcome = await self._poll_all(action.discover)
                elif type(action) is Scan:
                    outcome = await self._scan_all()
                elif type(action) is Verify:
                    outcome = await arun(
                        self.core.reader.verify(self._clock(), action.writers),
                        self._answers,
                        self._clock,
                    )
                elif type(action) is Wait:
                    await asyncio.sleep(action.seconds)
                else:
                    assert type(action) is Hand
                    yield action.batch
                action = steps.send((outcome, self._clock()))
        except StopIteration:
            pass
        await asyncio.get_running_loop().run_in_executor(None, self._finish)

    async def _poll_all(self, discover: bool | None) -> list[Item]:
        core = self.core.reader
        batch: list[Item] = await arun(
            core.poll(self._clock(), discover=discover, due_only=True), self._answers, self._clock
        )
        loop = asyncio.get_running_loop()
        final = bool(discover)
        for source in self.core.active_sources():
            batch += await loop.run_in_executor(None, functools.partial(source.poll, final=final))
        return batch

    async def _scan_all(self) -> list[Item]:
        items: list[Item] = await arun(
            self.core.reader.scan(self._clock()), self._answers, self._clock
        )
        return items + await self._poll_all(True)
