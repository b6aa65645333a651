"""The orchestrator session: completion rules, results, callbacks, diagnostics, reattach."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pipes_bus import ConfigurationError
from pipes_bus._orchestrator.session import DEFAULT_SETTLE
from pipes_bus._wire.bootstrap import decode_params
from pipes_bus.log import ChunkWriter
from pipes_bus.messages import Custom, Opened, WriterInfo
from pipes_bus.orchestrator import Event, Session, StreamFault, run_subprocess
from pipes_bus.transports import open_transport
from tests.helpers import FakeClock


def _session(bus: str, fake: FakeClock, **options: object) -> Session:
    return Session(bus, sleep=fake.sleep, clock=fake, **options)  # type: ignore[arg-type]


def _writer(
    session: Session, name: str, pid: int | None = None, host: str | None = None
) -> ChunkWriter:
    writer = ChunkWriter(session.transport, session.id, name)
    writer.write(Opened(info=WriterInfo(id=name, pid=pid, host=host)))
    return writer


@pytest.fixture
def bus(tmp_path: Path) -> str:
    return str(tmp_path / "bus")


class TestCompletion:
    def test_finishes_as_soon_as_every_writer_has_closed(self, bus: str) -> None:
        """With the work done and all writers closed, the session ends without waiting out grace."""
        fake = FakeClock(0.0)
        session = _session(bus, fake, grace=1000.0)
        writer = _writer(session, "w1")
        writer.write(Custom(payload=1))
        writer.close()
        result = session.wait(done=lambda: True)
        assert result.ok
        # No grace: one wait of `settle` (the last look for late writers), then the end.
        assert (fake.now, fake.slept) == (DEFAULT_SETTLE, 1)
        assert [e.message.payload for e in result.custom_messages] == [1]  # type: ignore[union-attr]

    def test_a_straggler_gets_grace_then_is_named_with_its_last_message(self, bus: str) -> None:
        """A writer that never closes is waited for `grace` seconds, then reported incomplete."""
        fake = FakeClock(0.0)
        session = _session(bus, fake, grace=30.0)
        closed = _writer(session, "done")
        closed.close()
        straggler = _writer(session, "late")
        for i in range(3):
            straggler.write(Custom(payload=i))
        straggler.flush()
        result = session.wait(done=lambda: True)
        assert fake.now == 30.0  # the grace, counted from the last data received
        [incomplete] = result.incomplete
        assert incomplete.id == "late"
        assert incomplete.last is not None and incomplete.last.seq == 3
        assert result.problems() == [
            "writer late never closed; its last delivered message was #3 (custom)"
        ]
        assert result.exit_status() == 4

    def test_a_writer_that_closes_during_grace_completes_the_session(self, bus: str) -> None:
        """A straggler that closes within the grace period makes the session complete and ok."""
        fake = FakeClock(0.0)
        session = _session(bus, fake, grace=30.0)
        late = _writer(session, "late")
        late.flush()
        seen: list[int] = []

        def done() -> bool:
            seen.append(1)
            if len(seen) == 3:
                late.close()
            return True

        result = session.wait(done=done)
        assert result.ok
        assert fake.now < 30.0

    def test_writers_of_dead_local_processes_are_not_waited_for(self, bus: str) -> None:
        """A writer whose process on this host is gone is reported at once, not after grace."""
        import socket
        import subprocess
        import sys

        gone = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        fake = FakeClock(0.0)
        session = _session(bus, fake, grace=1000.0)
        writer = _writer(session, "dead", pid=int(gone.stdout), host=socket.gethostname())
        writer.flush()
        result = session.wait(done=lambda: True)
        assert [w.id for w in result.incomplete] == ["dead"]
        assert fake.slept == 1  # one poll to see nothing more comes, none of the grace

    def test_without_done_it_ends_when_all_writers_closed(self, bus: str) -> None:
        """With no process to watch, the session ends once at least one writer opened and all closed."""
        fake = FakeClock(0.0)
        session = _session(bus, fake)
        w = _writer(session, "w")
        w.close()
        assert session.wait().ok


class TestConfiguration:
    def test_a_session_on_a_given_transport_tells_the_worker_that_bus(self, bus: str) -> None:
        """Session(transport=t) without bus= reads t and tells the worker t's URL."""
        transport = open_transport(bus)
        session = Session(transport=transport)
        assert session.bus == transport.url == bus
        assert decode_params(session.env).bus == bus

    def test_a_bus_that_is_not_the_transports_is_refused(self, bus: str) -> None:
        """Telling the worker one place while reading another is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="is not the transport's location"):
            Session(bus + "-other", transport=open_transport(bus))

    @pytest.mark.parametrize("empty", ["", "   "])
    def test_an_empty_bus_url_is_refused(self, empty: str) -> None:
        """An empty bus URL is an error, not a silent fall back to the default bus."""
        with pytest.raises(ConfigurationError, match="The bus URL is empty"):
            Session(empty)

    def test_a_memory_bus_cannot_be_launched_on(self) -> None:
        """run_subprocess refuses a bus in this process's memory: the command could not
        reach it and every message would be lost."""
        with pytest.raises(ConfigurationError, match="lives in this process's memory"):
            run_subprocess(["true"], bus=f"memory://x-{uuid.uuid4().hex}")

    def test_the_sessions_clock_drives_its_reader_and_sources(self, bus: str) -> None:
        """A session's injected clock is the one its reader and its (active) Dagster source
        use: moving it makes their next poll due."""
        fake = FakeClock(0.0)
        session = _session(bus, fake)
        _writer(session, "w").flush()
        [dagster] = session.sources
        assert dagster.path is not None
        with open(dagster.path, "ab") as f:
            f.write(b'{"__dagster_pipes_version": "0.1", "method": "opened", "params": {}}\n')
        session._poll_all()
        waits = [session.reader.wait_time(), dagster.wait_time()]
        assert all(0 < w < 10 for w in waits)
        fake.now += max(waits)
        assert session.reader.wait_time() == 0
        assert dagster.wait_time() == 0


class TestResult:
    def test_callbacks_see_every_item_in_order(self, bus: str) -> None:
        """on_event callbacks receive each event and fault, in delivery order."""
        fake = FakeClock(0.0)
        session = _session(bus, fake)
        seen: list[Event | StreamFault] = []
        session.on_event(seen.append)
        writer = _writer(session, "w")
        for i in range(10):
            writer.write(Custom(payload=i))
        writer.close()
        items = list(session.follow(done=lambda: True))
        assert seen == items
        assert [i.seq for i in items if isinstance(i, Event)] == list(range(12))

    def test_faults_make_the_session_fail_with_a_reason(self, bus: str) -> None:
        """An undeliverable object in a stream is a fault, exit status 5, with the key named."""
        fake = FakeClock(0.0)
        session = _session(bus, fake)
        writer = _writer(session, "w")
        writer.close()
        session.transport.put_if_absent(f"{session.id}/streams/w2/00000000000000000000", b"garbage")
        result = session.wait(done=lambda: True, grace=0)
        assert [f.reason for f in result.faults] == ["foreign"]
        assert result.exit_status() == 5
        assert "w2/00000000000000000000" in (result.reason() or "")

    def test_diagnostics_say_where_the_reader_looked(self, bus: str) -> None:
        """When no writer ever opens, the result explains what was injected and what was found."""
        fake = FakeClock(0.0)
        session = _session(bus, fake)
        result = session.wait(done=lambda: True)
        assert result.writers == {}
        assert f"looked in: {bus}/{session.id}/streams/" in result.diagnostics
        assert "PIPES_BUS_SESSION" in result.diagnostics
        assert "never called pipes_bus.open_worker()" in result.diagnostics


class TestReattach:
    def test_a_new_orchestrator_resumes_from_the_cursor(self, bus: str) -> None:
        """Attaching with a saved cursor delivers the rest: no duplicates, no loss."""
        fake = FakeClock(0.0)
        first = _session(bus, fake)
        writer = _writer(first, "w")
        for i in range(100):
            writer.write(Custom(payload=i))
        writer.flush()
        consumed = []
        for item in first.follow(done=lambda: True, grace=0):
            consumed.append(item)
            if len(consumed) == 40:
                break
        saved = first.cursor.dumps()
        for i in range(100, 150):
            writer.write(Custom(payload=i))
        writer.close()
        from pipes_bus.orchestrator import SessionCursor

        second = Session.attach(
            open_transport(bus),
            first.id,
            cursor=SessionCursor.loads(saved),
            sleep=fake.sleep,
            clock=fake,
        )
        rest = list(second.follow())
        seqs = [e.seq for e in consumed + rest if isinstance(e, Event)]
        assert seqs == list(range(152))

    def test_a_takeover_knows_each_writers_liveness_and_records_the_end(self, bus: str) -> None:
        """The checkpoint keeps each writer's heartbeat and when it was last heard; a
        follower attached with it starts from there, and on closing records how the
        session ended (a follower attached without a cursor records nothing)."""
        from pipes_bus.orchestrator import SessionCursor, session_info

        fake = FakeClock(0.0)
        first = _session(bus, fake)
        writer = ChunkWriter(first.transport, first.id, "w")
        writer.write(Opened(info=WriterInfo(id="w", host="elsewhere"), heartbeat=30.0))
        writer.flush()
        list(first.follow(done=lambda: True, grace=0))
        saved = SessionCursor.loads(first.checkpoint().dumps())
        summary = saved.writers["w"]
        assert summary.heartbeat == 30.0 and summary.last_heard is not None
        watcher = Session.attach(open_transport(bus), first.id, sleep=fake.sleep, clock=fake)
        writer.close()
        watcher.wait()
        watcher.close()
        assert session_info(open_transport(bus), first.id).state == "running"
        second = Session.attach(
            open_transport(bus), first.id, cursor=saved, sleep=fake.sleep, clock=fake
        )
        assert second.result.writers["w"].last_heard == summary.last_heard
        assert second.wait().ok
        second.close()
        info = session_info(open_transport(bus), first.id)
        assert (info.state, info.status) == ("succeeded", 0)


class TestBusUrl:
    def test_default_bus_is_a_local_directory_under_the_cache(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """Without a URL or $PIPES_BUS_URL, sessions live in $XDG_CACHE_HOME/pipes-bus/bus."""
        monkeypatch.delenv("PIPES_BUS_URL", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        session = Session()
        assert session.bus == str(tmp_path / "pipes-bus" / "bus")

    def test_pipes_bus_url_overrides_the_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """$PIPES_BUS_URL picks the bus when no URL is given."""
        url = f"memory://env-{uuid.uuid4().hex}"
        monkeypatch.setenv("PIPES_BUS_URL", url)
        assert Session().bus == url
