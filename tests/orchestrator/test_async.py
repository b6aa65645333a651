"""The asyncio session: many sessions followed from one event loop, no thread per session."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipes_bus import ConfigurationError
from pipes_bus.messages import CancelRequest
from pipes_bus.orchestrator import AsyncSession, Event, Session, SessionResult

# A worker process that reports into many sessions: one writer per session, all open at once.
MANY = """
import json, sys, pipes_bus
envs = json.load(open(sys.argv[1]))
workers = [pipes_bus.open_worker(env=env, label=f"w{i}") for i, env in enumerate(envs)]
for n in range(5):
    for i, worker in enumerate(workers):
        worker.report_custom_message({"session": i, "n": n})
for worker in workers:
    worker.close()
"""


class TestManySessions:
    def test_200_sessions_are_followed_from_one_loop_with_a_bounded_thread_count(
        self, tmp_path: Path
    ) -> None:
        """200 concurrent sessions, their writers in 4 other processes: every message of
        every session arrives exactly once, in order, and the follower's thread count stays
        that of the loop's shared executor, not one per session."""
        bus = str(tmp_path / "bus")
        script = tmp_path / "many.py"
        script.write_text(MANY)
        peak = [threading.active_count()]

        async def follow_all() -> list[list[Event]]:
            sessions = [AsyncSession(bus, grace=30.0, sources=[]) for _ in range(200)]
            await asyncio.gather(*(s.open() for s in sessions))
            procs = []
            for part in range(4):
                envs = tmp_path / f"envs{part}.json"
                envs.write_text(json.dumps([s.env for s in sessions[part::4]]))
                procs.append(subprocess.Popen([sys.executable, str(script), str(envs)]))
            done = all(p.poll() is not None for p in procs)

            async def one(session: AsyncSession) -> list[Event]:
                events = []
                async for item in session.follow(
                    done=lambda: all(p.poll() is not None for p in procs)
                ):
                    assert isinstance(item, Event), item
                    events.append(item)
                    peak[0] = max(peak[0], threading.active_count())
                await session.aclose()
                return events

            try:
                return await asyncio.gather(*(one(s) for s in sessions))
            finally:
                for p in procs:
                    p.wait(timeout=60)
                assert not done

        results = asyncio.run(follow_all())
        for index, events in enumerate(results):
            payloads = [
                e.message.payload for e in events if e.message.__struct_config__.tag == "custom"
            ]  # type: ignore[union-attr]
            assert len(payloads) == 5, index
            assert [p["n"] for p in payloads] == list(range(5))
            assert len({p["session"] for p in payloads}) == 1
            assert [e.seq for e in events] == list(range(7))
        # The loop's default executor on this machine, plus the main thread: not 200.
        assert peak[0] <= 40


class TestOpening:
    def test_the_environment_needs_the_session_open(self, tmp_path: Path) -> None:
        """An AsyncSession does no I/O until opened; env before that is a clear error."""
        session = AsyncSession(str(tmp_path / "bus"))
        with pytest.raises(ConfigurationError, match=r"await session\.open"):
            _ = session.env
        assert not (tmp_path / "bus").exists()

    def test_async_and_blocking_sessions_read_the_same(self, tmp_path: Path) -> None:
        """A session written by a real worker reads the same through both faces."""
        bus = str(tmp_path / "bus")
        with Session(bus) as blocking:
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import pipes_bus\nwith pipes_bus.open_worker() as w: "
                    "w.report_custom_message(1)",
                ],
                env={**__import__("os").environ, **blocking.env},
                check=True,
            )
            first = blocking.wait(done=lambda: True)

        async def again() -> list[int]:
            attached = await AsyncSession.attach(blocking.transport, blocking.id)
            return [e.seq async for e in attached.follow()]

        assert asyncio.run(again()) == [0, 1, 2]
        assert first.counts == {"opened": 1, "custom": 1, "closed": 1}


class TestCancel:
    def test_an_async_session_cancels_and_follows_to_the_end(self, tmp_path: Path) -> None:
        """await session.cancel(): the worker stops (flag mode), its report and `closed`
        arrive, and the result is cancelled, status 7, with the request that was made."""
        from pipes_bus import open_worker

        async def go() -> tuple[CancelRequest, SessionResult]:
            async with AsyncSession(str(tmp_path / "bus"), sources=[]) as session:
                worker = open_worker(env=session.env, on_cancel="flag")
                request = await session.cancel("from the loop")
                await asyncio.get_running_loop().run_in_executor(
                    None, worker.cancel_requested.wait, 60
                )
                worker.report_custom_message(worker.cancelled.reason)  # type: ignore[union-attr]
                worker.close()
                return request, await session.wait()

        request, result = asyncio.run(go())
        assert result.cancelled == request
        assert [e.message.payload for e in result.custom_messages] == ["from the loop"]  # type: ignore[union-attr]
        assert result.exit_status() == 7
