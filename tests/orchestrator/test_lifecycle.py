"""A session's life on real stores: cancel, liveness, its records, and collecting it.

Every worker here is detached (not a child of the test: init adopts it), so the
orchestrator can reach it only through the bus, as on another host.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipes_bus.orchestrator import (
    Session,
    SessionResult,
    delete_session,
    list_sessions,
    session_info,
)
from pipes_bus.transports import Transport, open_transport
from tests.helpers import cli, detach, write_script


class Workers:
    """Detached workers started by a test, and killed (thawed first) at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.pids: list[int] = []

    def start(self, session: Session, body: str, *args: str, **env: str) -> int:
        script = write_script(self.tmp_path, body, name=f"worker{len(self.pids)}.py")
        log = self.tmp_path / f"worker{len(self.pids)}.log"
        pid = detach([sys.executable, str(script), *args], {**session.env, **env}, log=log)
        self.pids.append(pid)
        return pid

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker*.log")))

    def kill_all(self) -> None:
        for pid in self.pids:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start detached workers; none outlives the test."""
    made = Workers(tmp_path)
    yield made
    made.kill_all()


def poll_until(condition: Callable[[], Any], timeout: float = 120.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.05)


def streams(session: Session) -> list[str]:
    """The session's writer streams on the store now."""
    return session.transport.list(f"{session.id}/streams")


def chunks(session: Session) -> int:
    """Chunks published so far, over every stream."""
    return sum(len(session.transport.list(f"{session.id}/streams/{w}")) for w in streams(session))


def dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] == "Z"
    except FileNotFoundError:
        return True


def custom(result: SessionResult, writer: str | None = None) -> list[Any]:
    return [
        e.message.payload  # type: ignore[union-attr]
        for e in result.custom_messages
        if writer is None or e.writer == writer
    ]


SLEEPER = """
import time, pipes_bus
with pipes_bus.open_worker() as w:
    w.log.info("waiting")
    time.sleep(3600)
"""

FLAGGED_WRITERS = """
import sys, pipes_bus
workers = [pipes_bus.open_worker(label=f"{sys.argv[1]}-{i}", on_cancel="flag")
           for i in range(int(sys.argv[2]))]
for w in workers:
    w.cancel_requested.wait(600)
for w in workers:
    w.report_custom_message({"stopped": w.cancelled.reason})
    w.close()
"""

BURST = """
import itertools, pipes_bus
with pipes_bus.open_worker() as w:
    for i in itertools.count():
        w.report_custom_message(i)
"""


class TestCancel:
    def test_a_detached_worker_stops_and_its_closed_says_who_and_why(
        self, store_url: str, workers: Workers
    ) -> None:
        """Session.cancel reaches a worker the orchestrator cannot signal: it raises
        Cancelled, its `closed` is delivered with the reason, it exits; the session is 7."""
        with Session(store_url, settle=0.0) as session:
            pid = workers.start(session, SLEEPER)
            poll_until(lambda: streams(session), what="the worker to open")
            request = session.cancel("enough for today")
            result = session.wait()
        assert request.reason == "enough for today" and request.by.endswith(f"pid {os.getpid()}")
        [state] = result.writers.values()
        assert state.closed and state.exception is not None, workers.logs()
        assert state.exception.type.endswith("Cancelled")
        assert state.exception.message == f"cancelled by {request.by}: enough for today"
        assert result.cancelled == request and result.exit_status() == 7
        poll_until(lambda: dead(pid), what="the worker to exit")
        info = session_info(open_transport(store_url), session.id)
        assert (info.state, info.status) == ("cancelled", 7)

    def test_64_writers_in_four_processes_all_stop(self, store_url: str, workers: Workers) -> None:
        """One request, 64 writers (flag mode): each sees it, reports, closes cleanly."""
        with Session(store_url, settle=0.0) as session:
            for n in range(4):
                workers.start(session, FLAGGED_WRITERS, f"p{n}", "16")
            poll_until(lambda: len(streams(session)) == 64, what="64 writers to open")
            session.cancel("scale down")
            result = session.wait()
        assert len(result.writers) == 64, workers.logs()
        assert all(w.closed and w.exception is None for w in result.writers.values())
        assert custom(result) == [{"stopped": "scale down"}] * 64
        assert sorted(w.label or "" for w in result.writers.values()) == sorted(
            f"p{n}-{i}" for n in range(4) for i in range(16)
        )
        assert result.exit_status() == 7

    def test_a_cancel_during_a_burst_loses_nothing_reported_before_it(
        self, store_url: str, workers: Workers
    ) -> None:
        """Cancelled mid-burst, the worker's stream holds every message it reported, in
        order, then `closed` counting them: nothing lost, nothing twice."""
        with Session(store_url, settle=0.0, collect=True) as session:
            workers.start(session, BURST)
            poll_until(lambda: chunks(session) > 3, what="the burst")
            session.cancel("mid-burst")
            result = session.wait()
        [state] = result.writers.values()
        reported = custom(result)
        assert reported == list(range(len(reported))) and len(reported) > 0, workers.logs()
        assert state.closed and state.exception is not None
        assert state.exception.type.endswith("Cancelled")
        assert state.messages == len(reported) + 2  # opened, the burst, closed
        assert not result.faults


FROZEN_OR_IDLE = """
import os, signal, sys, time, pipes_bus
with pipes_bus.open_worker(label=sys.argv[1]) as w:
    w.log.info("up")
    w.flush()
    if sys.argv[1] == "frozen":
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(float(sys.argv[2]))
"""


class TestLiveness:
    def test_a_frozen_writer_is_lost_and_an_idle_one_never(
        self, store_url: str, workers: Workers
    ) -> None:
        """Heartbeats every 0.5 s, liveness 3 s: the writer frozen with SIGSTOP (alive to
        the pid check) is declared lost; the one idle for 8 s is not, and closes; the
        session ends 4 naming only the frozen one."""
        with Session(
            store_url, settle=0.0, liveness=3.0, writer_settings={"heartbeat": 0.5}
        ) as session:
            workers.start(session, FROZEN_OR_IDLE, "frozen", "0")
            workers.start(session, FROZEN_OR_IDLE, "idle", "8")
            result = session.wait()
        states = {w.label: w for w in result.writers.values()}
        assert set(states) == {"frozen", "idle"}, workers.logs()
        assert states["idle"].closed and not states["idle"].lost
        assert states["idle"].beats > 0 and states["idle"].exception is None
        assert states["frozen"].lost and not states["frozen"].closed
        assert [w.label for w in result.lost] == ["frozen"]
        assert result.exit_status() == 4
        assert result.reason() == (
            f"writer {states['frozen'].name} was lost: {states['frozen'].heard_text()}; "
            "its last delivered message was #1 (log)"
        )
        assert session_info(open_transport(store_url), session.id).state == "lost"

    def test_a_writer_killed_on_another_host_is_lost_not_waited_for(
        self, store_url: str, workers: Workers
    ) -> None:
        """A writer that says it is on another host cannot be found by pid: killed with
        SIGKILL, only its silence tells; the session ends 4 well before its grace."""
        with Session(
            store_url, settle=0.0, grace=3600, liveness=3.0, writer_settings={"heartbeat": 0.5}
        ) as session:
            pid = workers.start(session, SLEEPER, PIPES_BUS_HOSTNAME="another-host")
            poll_until(lambda: chunks(session), what="the worker to report")
            os.kill(pid, signal.SIGKILL)
            started = time.monotonic()
            result = session.wait()
        assert time.monotonic() - started < 600  # not the hour of grace
        [state] = result.writers.values()
        assert state.host == "another-host" and state.lost
        assert result.exit_status() == 4


def make_sessions(store_url: str) -> tuple[Session, Session, Session, Any]:
    """Three sessions: one succeeded, one cancelled, one still running (its worker open)."""
    from pipes_bus import open_worker

    done = Session(store_url, settle=0.0).open()
    with open_worker(env=done.env) as w:
        w.report_custom_message("ok")
    done.wait()
    done.close()
    cancelled = Session(store_url, settle=0.0).open()
    worker = open_worker(env=cancelled.env, on_cancel="flag")
    cancelled.cancel("not needed")
    poll_until(lambda: worker.cancelled, what="the cancel")
    worker.close()
    cancelled.wait()
    cancelled.close()
    running = Session(store_url, settle=0.0).open()
    still = open_worker(env=running.env)
    still.report_custom_message("working")
    still.flush()
    return done, cancelled, running, still


class TestRecords:
    def test_ls_shows_each_state_and_gc_deletes_exactly_what_it_lists(self, store_url: str) -> None:
        """A succeeded, a cancelled and a running session: list_sessions tells them apart;
        `gc --dry-run` lists the two finished ones with their objects and bytes, `gc`
        deletes exactly those, and the running one is untouched."""
        done, cancelled, running, still = make_sessions(store_url)
        transport: Transport = open_transport(store_url)
        try:
            states = {i.session: i.state for i in list_sessions(transport)}
            assert states == {
                done.id: "succeeded",
                cancelled.id: "cancelled",
                running.id: "running",
            }
            sizes = {s: sum(n for _, n in transport.walk(s)) for s in (done.id, cancelled.id)}
            dry = cli("gc", store_url, "--older-than", "0s", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            listed = sorted(
                line.split()[2]
                for line in dry.stdout.splitlines()
                if line.startswith("would delete s-")
            )
            assert listed == sorted([done.id, cancelled.id])
            assert "would delete 2 session(s) older than 0s" in dry.stdout
            assert (
                f"kept 1 unfinished session(s) older than that: {running.id} (running)"
                in dry.stderr
            )
            assert {i.session for i in list_sessions(transport)} == {
                done.id,
                cancelled.id,
                running.id,
            }  # a dry run deletes nothing
            real = cli("gc", store_url, "--older-than", "0s")
            assert real.returncode == 0, real.stderr
            deleted = sorted(
                line.split()[1]
                for line in real.stdout.splitlines()
                if line.startswith("deleted s-")
            )
            assert deleted == listed
            freed = sum(sizes.values())
            assert f"deleted 2 session(s) older than 0s on {store_url}: " in real.stdout
            assert [i.session for i in list_sessions(transport)] == [running.id]
            assert transport.list(done.id) == [] and transport.list(cancelled.id) == []
            assert sum(n for _, n in transport.walk(running.id)) > 0
            assert freed > 0
        finally:
            still.close()
            running.close()
            transport.close()

    def test_delete_session_reports_objects_and_bytes(self, store_url: str) -> None:
        """delete_session removes every object of one session and says how much it freed."""
        done, cancelled, running, still = make_sessions(store_url)
        still.close()
        running.close()
        transport = open_transport(store_url)
        expected = list(transport.walk(done.id))
        objects, size = delete_session(transport, done.id)
        assert (objects, size) == (len(expected), sum(n for _, n in expected))
        assert transport.list(done.id) == []
        assert {i.session for i in list_sessions(transport)} == {cancelled.id, running.id}
