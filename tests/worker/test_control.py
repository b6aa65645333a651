"""The worker's side of the control channel: cancel requests, beats, and how a worker stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import msgspec
import pytest

from pipes_bus import Cancelled, ConfigurationError, open_worker
from pipes_bus._wire.control import Beat, CancelRequest, sign
from pipes_bus._wire.keys import beats_prefix, cancel_key, parse_beat
from pipes_bus._worker.control import Control
from pipes_bus.log import ChunkWriter, WriterSettings
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Session
from pipes_bus.transports import Transport
from pipes_bus.transports._file import FileTransport
from tests.helpers import FakeClock, WaitUntil, write_script

SESSION = "s-control"


def control(
    transport: Transport,
    *,
    heartbeat: float | None = 5.0,
    key: bytes | None = None,
    clock: FakeClock | None = None,
) -> tuple[Control, ChunkWriter, list[CancelRequest]]:
    """A Control for a fresh writer (not started), and the list its cancels land in."""
    clock = clock or FakeClock()
    writer = ChunkWriter(
        transport, SESSION, "w-1", WriterSettings(linger=0.01), key=key, clock=clock
    )
    seen: list[CancelRequest] = []
    made = Control(
        transport,
        SESSION,
        writer,
        heartbeat=heartbeat,
        check=0.01,
        on_cancel=seen.append,
        key=key,
        clock=clock,
    )
    return made, writer, seen


class TestBeats:
    def test_a_quiet_writer_leaves_a_beat_with_its_position(self, tmp_path: Path) -> None:
        """After heartbeat seconds with nothing published, one beat names the writer, its
        published count and next chunk; a newer beat replaces the older one."""
        bus = FileTransport(str(tmp_path))
        clock = FakeClock()
        made, writer, _ = control(bus, clock=clock)
        writer.write(Custom(payload=1))
        writer.flush()
        made._beat_if_quiet()
        assert bus.list(beats_prefix(SESSION)) == []  # not quiet long enough
        clock.advance(5.0)
        made._beat_if_quiet()
        [name] = bus.list(beats_prefix(SESSION))
        millis, wake, who = parse_beat(name) or (0, True, "")
        assert (wake, who) == (False, "w-1") and millis > 0
        beat = msgspec.json.decode(bus.get(f"{beats_prefix(SESSION)}/{name}") or b"", type=Beat)
        assert (beat.writer, beat.seq, beat.chunk, beat.mac) == ("w-1", 1, 1, None)
        clock.advance(5.0)
        made._beat_if_quiet()
        [newer] = bus.list(beats_prefix(SESSION))
        assert newer != name and made.beats == 2
        writer.close()

    def test_a_chunk_after_a_quiet_spell_comes_with_a_wake_beat(
        self, tmp_path: Path, wait_until: WaitUntil
    ) -> None:
        """Published after 2 s or more of quiet: one wake beat (it replaces the last beat);
        published sooner: none. A follower lists the beats, not every quiet stream."""
        bus = FileTransport(str(tmp_path))
        clock = FakeClock()
        made, writer, _ = control(bus, clock=clock, heartbeat=60.0)
        made.start()
        try:
            writer.write(Custom(payload=1))
            writer.flush()
            assert bus.list(beats_prefix(SESSION)) == []  # it had just opened
            clock.advance(1.5)
            writer.write(Custom(payload=2))
            writer.flush()
            assert bus.list(beats_prefix(SESSION)) == []  # not quiet long enough
            clock.advance(2.5)
            writer.write(Custom(payload=3))
            writer.flush()
            wait_until(lambda: made.beats == 1)  # left from the writer's thread
            [name] = bus.list(beats_prefix(SESSION))
            _, wake, who = parse_beat(name) or (0, False, "")
            assert (wake, who) == (True, "w-1") and made.beats == 1
            beat = msgspec.json.decode(bus.get(f"{beats_prefix(SESSION)}/{name}") or b"", type=Beat)
            assert (beat.seq, beat.wake) == (3, True)  # it names what is there to read
        finally:
            made.stop()
            writer.close()

    def test_a_writer_without_heartbeats_leaves_no_wake_beat(self, tmp_path: Path) -> None:
        """heartbeat=0 (none): no beats of any kind, wake beats included."""
        bus = FileTransport(str(tmp_path))
        clock = FakeClock()
        made, writer, _ = control(bus, clock=clock, heartbeat=None)
        made.start()
        try:
            clock.advance(10)
            writer.write(Custom(payload=1))
            writer.flush()
            assert bus.list(beats_prefix(SESSION)) == []
        finally:
            made.stop()
            writer.close()

    def test_a_writer_that_publishes_leaves_no_beat(self, tmp_path: Path) -> None:
        """A chunk is a sign of life: publishing resets the quiet time."""
        bus = FileTransport(str(tmp_path))
        clock = FakeClock()
        made, writer, _ = control(bus, clock=clock)
        clock.advance(4.0)
        writer.write(Custom(payload=1))
        writer.flush()
        clock.advance(4.0)
        made._beat_if_quiet()
        assert bus.list(beats_prefix(SESSION)) == []
        writer.close()

    def test_no_heartbeat_means_no_beats(self, tmp_path: Path) -> None:
        """heartbeat None (0 in the settings) turns beats off."""
        bus = FileTransport(str(tmp_path))
        clock = FakeClock()
        made, writer, _ = control(bus, heartbeat=None, clock=clock)
        clock.advance(3600)
        made._beat_if_quiet()
        assert bus.list(beats_prefix(SESSION)) == []
        writer.close()

    def test_a_signed_session_signs_its_beats(self, tmp_path: Path) -> None:
        """In a signed session each beat carries a MAC of its content under the key."""
        bus = FileTransport(str(tmp_path))
        key = b"k" * 32
        made, writer, _ = control(bus, key=key)
        made.beat()
        [name] = bus.list(beats_prefix(SESSION))
        beat = msgspec.json.decode(bus.get(f"{beats_prefix(SESSION)}/{name}") or b"", type=Beat)
        assert beat.mac is not None and beat == sign(key, beat)
        writer.close()


class TestCancelRequests:
    def test_a_request_is_seen_once_with_who_and_why(self, tmp_path: Path) -> None:
        """The first look after the request finds it; on_cancel gets it once; looking stops."""
        bus = FileTransport(str(tmp_path))
        made, writer, seen = control(bus)
        assert made._look_for_cancel() is False
        request = CancelRequest(reason="enough", by="ops@host pid 1", source="cli", at=2.0)
        assert bus.put_if_absent(cancel_key(SESSION), msgspec.json.encode(request))
        assert made._look_for_cancel() is True
        assert seen == [request]
        writer.close()

    @pytest.mark.parametrize("planted", [b"[not json", b"x" * 70_000], ids=["garbage", "huge"])
    def test_an_unreadable_request_is_a_cancel_all_the_same(
        self, tmp_path: Path, planted: bytes
    ) -> None:
        """Garbage or an oversized object at the cancel key still stops the writer: whoever
        can write there can stop it anyway; the reason says it could not be read."""
        bus = FileTransport(str(tmp_path))
        made, writer, seen = control(bus)
        assert bus.put_if_absent(cancel_key(SESSION), planted)
        assert made._look_for_cancel() is True
        assert seen == [CancelRequest(reason="(the cancel request could not be read)")]
        writer.close()

    def test_a_signed_session_ignores_an_unsigned_or_forged_request(self, tmp_path: Path) -> None:
        """With a key, only a request signed by it counts."""
        bus = FileTransport(str(tmp_path))
        key = b"k" * 32
        made, writer, seen = control(bus, key=key)
        forged = sign(b"x" * 32, CancelRequest(reason="forged"))
        assert bus.put_if_absent(cancel_key(SESSION), msgspec.json.encode(forged))
        assert made._look_for_cancel() is False and seen == []
        bus.delete(cancel_key(SESSION))
        real = sign(key, CancelRequest(reason="real"))
        assert bus.put_if_absent(cancel_key(SESSION), msgspec.json.encode(real))
        assert made._look_for_cancel() is True and seen == [real]
        writer.close()

    def test_the_thread_finds_a_request_without_being_asked(
        self, tmp_path: Path, wait_until: WaitUntil
    ) -> None:
        """Started, the control thread looks every `check` seconds on its own."""
        bus = FileTransport(str(tmp_path))
        made, writer, seen = control(bus)
        made.start()
        assert bus.put_if_absent(cancel_key(SESSION), msgspec.json.encode(CancelRequest()))
        wait_until(lambda: len(seen) == 1)
        made.stop()
        writer.close()


class TestCancelled:
    def test_cancelled_is_a_worker_termination_that_says_who_and_why(self) -> None:
        """Cancelled stops a worker as SIGTERM does (a WorkerTerminated, signum SIGTERM)."""
        from pipes_bus import WorkerTerminated

        request = CancelRequest(reason="over budget", by="ops@host pid 7", source="cli")
        stop = Cancelled(request.reason, request.by, request)
        assert isinstance(stop, WorkerTerminated) and stop.signum == signal.SIGTERM
        assert str(stop) == "cancelled by ops@host pid 7: over budget"
        assert (stop.reason, stop.by, stop.request) == ("over budget", "ops@host pid 7", request)
        assert str(Cancelled()) == "cancelled by the session"


class TestOpenWorker:
    def test_on_cancel_must_be_raise_or_flag(self) -> None:
        """Any other value is a configuration error naming both choices."""
        with pytest.raises(ConfigurationError, match="on_cancel must be 'raise' or 'flag'"):
            open_worker(on_cancel="ignore", env={})

    def test_heartbeat_and_cancel_check_must_be_seconds(self) -> None:
        """Negative or NaN timings are refused with what is expected."""
        with pytest.raises(ConfigurationError, match="heartbeat must be seconds"):
            WriterSettings(heartbeat=-1)
        with pytest.raises(ConfigurationError, match="cancel_check must be seconds above 0"):
            WriterSettings(cancel_check=float("nan"))

    def test_opened_announces_the_heartbeat(self, tmp_path: Path) -> None:
        """`opened` carries the heartbeat interval (the session's writer setting here)."""
        with Session(str(tmp_path / "bus"), writer_settings={"heartbeat": 7}) as session:
            with open_worker(env=session.env) as worker:
                worker.log.info("hi")
            result = session.wait()
        assert result.writers[worker.writer_id].heartbeat == 7  # type: ignore[union-attr]


def cancel_when_open(session: Session, reason: str = "stop now") -> threading.Thread:
    """Cancel ``session`` as soon as a writer has opened, from another thread."""

    def go() -> None:
        import time

        deadline = time.monotonic() + 60
        while not session.transport.list(f"{session.id}/streams"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        session.cancel(reason)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


class TestStopping:
    def test_by_default_cancelled_is_raised_in_the_main_thread_and_closed_carries_it(
        self, tmp_path: Path
    ) -> None:
        """A worker blocked in sleep gets Cancelled; its `closed` says who and why; the
        process ends by SIGTERM, as it would on a real one."""
        script = write_script(
            tmp_path,
            """
            import time, pipes_bus
            with pipes_bus.open_worker() as w:
                w.log.info("working")
                time.sleep(600)
            """,
        )
        with Session(str(tmp_path / "bus")) as session:
            proc = subprocess.Popen(
                [sys.executable, str(script)], env={**os.environ, **session.env}
            )
            cancel_when_open(session)
            result = session.wait(done=lambda: proc.poll() is not None)
        assert proc.wait(timeout=60) == -signal.SIGTERM
        [state] = result.writers.values()
        assert state.exception is not None
        assert state.exception.type.endswith("Cancelled")
        assert state.exception.message.endswith(": stop now")
        assert result.cancelled is not None and result.cancelled.reason == "stop now"
        assert result.exit_status() == 7

    def test_a_worker_that_handles_cancelled_finishes_its_own_way(self, tmp_path: Path) -> None:
        """Cancelled is an exception like any: caught, the worker reports and exits 0."""
        script = write_script(
            tmp_path,
            """
            import time, pipes_bus
            with pipes_bus.open_worker() as w:
                try:
                    time.sleep(600)
                except pipes_bus.Cancelled as c:
                    w.report_custom_message({"saved": True, "reason": c.reason})
            """,
        )
        with Session(str(tmp_path / "bus")) as session:
            proc = subprocess.Popen(
                [sys.executable, str(script)], env={**os.environ, **session.env}
            )
            cancel_when_open(session, "save and go")
            result = session.wait(done=lambda: proc.poll() is not None)
        assert proc.wait(timeout=60) == 0
        assert [e.message.payload for e in result.custom_messages] == [  # type: ignore[union-attr]
            {"saved": True, "reason": "save and go"}
        ]
        [state] = result.writers.values()
        assert state.closed and state.exception is None

    def test_with_on_cancel_flag_the_worker_checks_and_stops_cleanly(self, tmp_path: Path) -> None:
        """on_cancel="flag" raises nothing: the flag is set, the loop ends, closed is clean."""
        script = write_script(
            tmp_path,
            """
            import pipes_bus
            with pipes_bus.open_worker(on_cancel="flag") as w:
                n = 0
                while not w.cancel_requested.wait(0.01):
                    n += 1
                w.report_custom_message({"stopped": w.cancelled.reason})
            """,
        )
        with Session(str(tmp_path / "bus")) as session:
            proc = subprocess.Popen(
                [sys.executable, str(script)], env={**os.environ, **session.env}
            )
            cancel_when_open(session, "flagged")
            result = session.wait(done=lambda: proc.poll() is not None)
        assert proc.wait(timeout=60) == 0
        assert [e.message.payload for e in result.custom_messages] == [  # type: ignore[union-attr]
            {"stopped": "flagged"}
        ]
        assert result.exit_status() == 7

    def test_children_that_open_their_own_writers_are_cancelled_too(self, tmp_path: Path) -> None:
        """A worker's child process in the same session watches the request itself."""
        script = write_script(
            tmp_path,
            """
            import subprocess, sys, time, pipes_bus
            child = subprocess.Popen([sys.executable, "-c",
                "import time, pipes_bus\\n"
                "with pipes_bus.open_worker(label='child') as w:\\n"
                "    time.sleep(600)\\n"])
            with pipes_bus.open_worker(label="parent") as w:
                try:
                    time.sleep(600)
                finally:
                    child.wait()
            """,
        )
        with Session(str(tmp_path / "bus")) as session:
            proc = subprocess.Popen(
                [sys.executable, str(script)], env={**os.environ, **session.env}
            )

            def both_open() -> bool:
                return len(session.transport.list(f"{session.id}/streams")) == 2

            import time

            deadline = time.monotonic() + 60
            while not both_open():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            session.cancel("all of you")
            result = session.wait(done=lambda: proc.poll() is not None)
        proc.wait(timeout=60)
        labels = {
            w.label: w.exception.type.rsplit(".", 1)[-1] if w.exception else None
            for w in result.writers.values()
        }
        assert labels == {"parent": "Cancelled", "child": "Cancelled"}
