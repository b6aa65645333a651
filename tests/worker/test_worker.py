"""The worker side: open_worker, its reports, lifecycle and multi-writer behaviour."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import pipes_bus
import pipes_bus.orchestrator
from pipes_bus import NotInSessionError, PipesBusWarning
from pipes_bus._worker.capture import OUTPUT_PIECE
from pipes_bus.messages import BoolValue, Closed, IntValue, Log, Opened, TextValue
from pipes_bus.orchestrator import Session
from tests.helpers import cli_command, payloads, run_script


@pytest.fixture
def session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    """A session on a directory bus whose env is this process's env."""
    s = Session(str(tmp_path / "bus"), context={"asset_keys": ["orders"], "extras": {"x": 1}})
    for name, value in s.env.items():
        monkeypatch.setenv(name, value)
    return s


class TestOutsideASession:
    def test_raises_naming_the_missing_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without PIPES_BUS_SESSION, open_worker raises NotInSessionError naming it."""
        monkeypatch.delenv("PIPES_BUS_SESSION", raising=False)
        with pytest.raises(NotInSessionError, match="PIPES_BUS_SESSION"):
            pipes_bus.open_worker()

    def test_allow_missing_warns_and_reports_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """allow_missing=True yields a disabled worker, with a warning, whose reports do nothing."""
        monkeypatch.delenv("PIPES_BUS_SESSION", raising=False)
        with (
            pytest.warns(PipesBusWarning, match="Not in a pipes_bus session"),
            pipes_bus.open_worker(allow_missing=True) as worker,
        ):
            worker.report_custom_message({"a": 1})
            worker.log.info("nowhere")
            worker.flush()
        assert worker.enabled is False


class TestReports:
    def test_every_kind_of_report_arrives_typed(self, session: Session) -> None:
        """Logs, materializations, checks, progress and custom messages arrive as sent."""
        with pipes_bus.open_worker(label="main") as worker:
            assert worker.context.asset_keys == ["orders"]
            assert worker.context.extras == {"x": 1}
            assert worker.context.run_id == session.id
            worker.log.info("rows=%d", 5, extra={"table": "orders"})
            worker.report_materialization(
                metadata={"rows": 5, "ok": True, "note": "n"}, data_version="v1"
            )
            worker.report_check("not_empty", True, metadata={"rows": 5})
            worker.report_progress(3, 10, unit="files", label="copy")
            worker.report_custom_message({"k": [1, 2]})
        result = session.wait()
        assert result.ok
        [writer] = result.writers.values()
        assert writer.label == "main" and writer.closed and writer.exception is None
        assert writer.messages == 7
        [log] = [e.message for e in result.logs]
        assert isinstance(log, Log)
        assert (log.message, log.level, log.fields["table"]) == ("rows=5", "info", "orders")
        [mat] = [e.message for e in result.materializations]
        assert mat.asset_key == "orders" and mat.data_version == "v1"  # type: ignore[union-attr]
        assert mat.metadata == {"rows": IntValue(5), "ok": BoolValue(True), "note": TextValue("n")}  # type: ignore[union-attr]
        [check] = [e.message for e in result.checks]
        assert (check.check_name, check.passed, check.severity) == ("not_empty", True, "error")  # type: ignore[union-attr]
        assert writer.progress is not None and (writer.progress.current, writer.progress.total) == (
            3,
            10,
        )
        assert payloads(result) == [{"k": [1, 2]}]

    def test_an_unencodable_payload_fails_at_the_call_and_nothing_else(
        self, session: Session
    ) -> None:
        """A payload msgspec cannot encode raises EncodeError; the messages around it arrive."""
        with pipes_bus.open_worker() as worker:
            worker.report_custom_message(1)
            with pytest.raises(pipes_bus.EncodeError, match="Nothing was written"):
                worker.report_custom_message({"bad": object()})
            worker.report_custom_message(2)
        result = session.wait()
        assert payloads(result) == [1, 2]
        assert result.ok

    def test_asset_key_is_required_when_the_context_has_several(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """report_materialization without asset_key fails clearly if the context has two keys."""
        s = Session(str(tmp_path / "bus"), context={"asset_keys": ["a", "b"]})
        for name, value in s.env.items():
            monkeypatch.setenv(name, value)
        with pipes_bus.open_worker() as worker:
            with pytest.raises(pipes_bus.ConfigurationError, match="2 asset keys"):
                worker.report_materialization()
            worker.report_materialization("b")
        assert [e.message.asset_key for e in s.wait().materializations] == ["b"]  # type: ignore[union-attr]

    def test_a_raising_block_closes_with_the_structured_exception(self, session: Session) -> None:
        """An exception in the block is sent in `closed` with its cause chain, then re-raised."""
        with pytest.raises(ValueError, match="outer"), pipes_bus.open_worker():
            try:
                raise KeyError("inner")
            except KeyError as exc:
                raise ValueError("outer") from exc
        result = session.wait()
        [writer] = result.failed
        assert writer.exception is not None
        assert (writer.exception.type, writer.exception.message) == ("ValueError", "outer")
        assert writer.exception.cause is not None and writer.exception.cause.type == "KeyError"
        assert writer.exception.stack
        assert result.exit_status() == 3

    def test_sys_exit_zero_is_a_clean_close(self, session: Session) -> None:
        """sys.exit(0) inside the block closes the writer without an exception."""
        with pytest.raises(SystemExit), pipes_bus.open_worker():
            sys.exit(0)
        assert session.wait().ok

    def test_two_workers_in_one_process_get_two_streams(self, session: Session) -> None:
        """Each open_worker call is its own writer stream; nothing is shared or overwritten."""
        with pipes_bus.open_worker(label="a") as a, pipes_bus.open_worker(label="b") as b:
            for i in range(100):
                a.report_custom_message(("a", i))
                b.report_custom_message(("b", i))
        result = session.wait()
        assert sorted(w.label or "" for w in result.writers.values()) == ["a", "b"]
        for label in ("a", "b"):
            mine = [
                e.message.payload
                for e in result.custom_messages
                if result.writers[e.writer].label == label
            ]  # type: ignore[union-attr]
            assert mine == [[label, i] for i in range(100)]


class TestLabels:
    def test_label_comes_from_pipes_bus_label_or_rank(
        self, session: Session, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without label=, the writer is labelled from $PIPES_BUS_LABEL, else rank-$RANK."""
        monkeypatch.setenv("RANK", "3")
        with pipes_bus.open_worker() as first:
            pass
        monkeypatch.setenv("PIPES_BUS_LABEL", "driver")
        with pipes_bus.open_worker() as second:
            pass
        result = session.wait()
        assert result.writers[first.writer_id].label == "rank-3"
        assert result.writers[second.writer_id].label == "driver"
        assert first.writer_id.endswith("-rank-3")


class TestProcesses:
    def test_children_and_multiprocessing_each_get_a_stream(self, tmp_path: Path) -> None:
        """Forked children and spawned subprocesses each report into their own stream."""
        result = run_script(
            tmp_path,
            """
            import multiprocessing as mp, subprocess, sys
            import pipes_bus

            def work(rank):
                with pipes_bus.open_worker(label=f"rank {rank}") as w:
                    for i in range(200):
                        w.report_custom_message([rank, i])

            if __name__ == "__main__":
                with pipes_bus.open_worker(label="parent") as parent:
                    ctx = mp.get_context("fork")
                    procs = [ctx.Process(target=work, args=(r,)) for r in range(4)]
                    for p in procs: p.start()
                    for p in procs: p.join()
                    code = "import pipes_bus\\nwith pipes_bus.open_worker(label='child') as w: w.report_custom_message('c')"
                    subprocess.run([sys.executable, "-c", code], check=True)
                    parent.report_custom_message("done")
            """,
        )
        assert result.ok, result.problems()
        labels = sorted(w.label or "" for w in result.writers.values())
        assert labels == ["child", "parent", "rank 0", "rank 1", "rank 2", "rank 3"]
        by_label = {w.label: w.id for w in result.writers.values()}
        for rank in range(4):
            got = [
                e.message.payload
                for e in result.custom_messages
                if e.writer == by_label[f"rank {rank}"]
            ]  # type: ignore[union-attr]
            assert got == [[rank, i] for i in range(200)]
        assert result.counts["custom"] == 4 * 200 + 2

    def test_an_inherited_handle_refuses_to_write_in_the_child(self, tmp_path: Path) -> None:
        """A forked child using its parent's handle gets a clear error, not a shared stream."""
        result = run_script(
            tmp_path,
            """
            import os, sys
            import pipes_bus
            with pipes_bus.open_worker() as w:
                pid = os.fork()
                if pid == 0:
                    try:
                        w.report_custom_message("from child")
                    except pipes_bus.PipesBusError as exc:
                        os._exit(0 if "call open_worker() in this process" in str(exc) else 1)
                    os._exit(2)
                _, status = os.waitpid(pid, 0)
                w.report_custom_message(os.waitstatus_to_exitcode(status))
            """,
        )
        assert result.ok, result.problems()
        assert payloads(result) == [0]
        assert len(result.writers) == 1

    def test_sigterm_flushes_and_closes_with_the_signal(self, tmp_path: Path) -> None:
        """SIGTERM closes the writer with an exception naming the signal, after flushing."""
        started = tmp_path / "started"
        script = tmp_path / "w.py"
        script.write_text(
            "import pathlib, time, pipes_bus\n"
            "with pipes_bus.open_worker() as w:\n"
            "    for i in range(10): w.report_custom_message(i)\n"
            f"    pathlib.Path({str(started)!r}).write_text('x')\n"
            "    time.sleep(60)\n"
        )

        def terminate_when_started(session: Session, process: subprocess.Popen[bytes]) -> None:
            import time

            deadline = time.monotonic() + 30
            while not started.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            process.send_signal(signal.SIGTERM)

        result = pipes_bus.orchestrator.run_subprocess(
            [sys.executable, str(script)],
            bus=str(tmp_path / "bus"),
            on_start=terminate_when_started,
        )
        assert result.exit_code == -signal.SIGTERM
        assert payloads(result) == list(range(10))
        [writer] = result.failed
        assert writer.exception is not None
        assert writer.exception.type.endswith("WorkerTerminated")
        assert writer.exception.message == "received SIGTERM"

    def test_sigkill_delivers_what_was_flushed_and_names_the_writer(self, tmp_path: Path) -> None:
        """After SIGKILL, flushed messages arrive and the writer is incomplete with its last message."""
        result = run_script(
            tmp_path,
            """
            import os, signal, pipes_bus
            with pipes_bus.open_worker() as w:
                for i in range(50): w.report_custom_message(i)
                w.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            """,
            grace=3600,
        )
        assert result.exit_code == -signal.SIGKILL
        assert payloads(result) == list(range(50))
        [writer] = result.incomplete
        assert writer.last is not None and writer.last.seq == 50
        assert "never closed" in (result.reason() or "") or result.exit_status() == 128 + 9
        assert any(
            "never closed; its last delivered message was #50 (custom)" in p
            for p in result.problems()
        )

    def test_a_writer_left_open_is_closed_at_interpreter_exit(self, tmp_path: Path) -> None:
        """A worker never exited explicitly is flushed and closed by the atexit hook."""
        result = run_script(
            tmp_path,
            """
            import pipes_bus
            worker = pipes_bus.open_worker()
            for i in range(5): worker.report_custom_message(i)
            """,
        )
        assert result.ok, result.problems()
        assert payloads(result) == list(range(5))

    def test_an_uncaught_exception_without_with_is_recorded_at_exit(self, tmp_path: Path) -> None:
        """A worker closed at exit after an uncaught exception reports that exception."""
        result = run_script(
            tmp_path,
            """
            import pipes_bus
            worker = pipes_bus.open_worker()
            worker.report_custom_message(1)
            raise RuntimeError("no with block")
            """,
        )
        assert result.exit_code == 1
        [writer] = result.failed
        assert writer.exception is not None
        assert (writer.exception.type, writer.exception.message) == (
            "RuntimeError",
            "no with block",
        )
        assert payloads(result) == [1]

    def test_forked_pool_children_keep_default_signal_behaviour(self, tmp_path: Path) -> None:
        """Pool processes forked from a worker die quietly on SIGTERM, with no stray traceback."""
        script = tmp_path / "pool.py"
        script.write_text(
            "import multiprocessing as mp, pipes_bus\n"
            "def f(x): return x * 2\n"
            "if __name__ == '__main__':\n"
            "    with pipes_bus.open_worker() as w:\n"
            "        with mp.get_context('fork').Pool(3) as pool:\n"
            "            w.report_custom_message(pool.map(f, range(6)))\n"
        )
        proc = subprocess.run(
            [
                *cli_command(),
                "run",
                "-q",
                "--bus",
                str(tmp_path / "bus"),
                "--",
                sys.executable,
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "WorkerTerminated" not in proc.stderr and "Traceback" not in proc.stderr

    def test_retry_settings_travel_from_the_session(self, tmp_path: Path) -> None:
        """writer_settings with a retry policy given as a dict reach the worker intact."""
        result = run_script(
            tmp_path,
            """
            import pipes_bus
            with pipes_bus.open_worker() as w:
                w.report_custom_message(1)
            """,
            writer_settings={"retry": {"deadline": 5.0, "initial": 0.01}, "linger": 0.001},
        )
        assert result.ok, result.problems()
        assert payloads(result) == [1]

    def test_captured_output_travels_through_the_bus(self, tmp_path: Path) -> None:
        """With capture_output, the worker's stdout and stderr arrive as output messages."""
        result = run_script(
            tmp_path,
            """
            import os, sys, pipes_bus
            with pipes_bus.open_worker():
                print("to stdout", flush=True)
                print("to stderr", file=sys.stderr, flush=True)
                os.system("echo from a child process")
            """,
            capture_output=True,
        )
        assert result.ok, result.problems()
        text = {"stdout": "", "stderr": ""}
        for event in result.outputs:
            text[event.message.stream] += event.message.text  # type: ignore[union-attr]
        assert text == {"stdout": "to stdout\nfrom a child process\n", "stderr": "to stderr\n"}

    def test_a_line_over_the_message_limit_is_split_never_dropped(self, tmp_path: Path) -> None:
        """A 20 MB line (over the 8 MiB message limit) and the lines around it, in the same
        reads, all arrive, in order, in output messages of at most OUTPUT_PIECE characters."""
        result = run_script(
            tmp_path,
            """
            import os, pipes_bus
            with pipes_bus.open_worker():
                os.write(1, b"before\\n" + b"y" * 20_000_000 + b"\\nafter\\n")
                os.write(1, "é€ split across reads: ".encode() * 3000 + b"end\\n")
            """,
            capture_output=True,
        )
        assert result.ok, result.problems()
        texts = [e.message.text for e in result.outputs]  # type: ignore[union-attr]
        assert all(len(t) <= OUTPUT_PIECE for t in texts)
        expected = "before\n" + "y" * 20_000_000 + "\nafter\n" + "é€ split across reads: " * 3000
        assert "".join(texts) == expected + "end\n"
        assert len(texts) < 20_000_000 // OUTPUT_PIECE + 10


class TestLightImport:
    @pytest.mark.parametrize(
        "code",
        ["import pipes_bus", "import pipes_bus; pipes_bus.open_worker; pipes_bus.Context"],
        ids=["import", "worker-names"],
    )
    def test_the_worker_face_loads_no_reader_orchestrator_asyncio_or_sdk(self, code: str) -> None:
        """`import pipes_bus`, and the worker's names once used, pull in no reader, no
        orchestrator or CLI code, no asyncio or tenacity, no rich and no cloud SDK."""
        out = subprocess.run(
            [sys.executable, "-c", f"{code}; import sys; print('\\n'.join(sorted(sys.modules)))"],
            capture_output=True,
            text=True,
            check=True,
        )
        loaded = set(out.stdout.split())
        forbidden = {
            "pipes_bus._log.reader",
            "pipes_bus._orchestrator",
            "pipes_bus.orchestrator",
            "pipes_bus.cli",
            "pipes_bus.integrations",
            "asyncio",
            "tenacity",
            "rich",
            "s3fs",
            "gcsfs",
            "adlfs",
            "obstore",
            "boto3",
            "botocore",
            "aiobotocore",
            "azure",
            "google",
            "fsspec",
            "dagster",
            "dagster_pipes",
        }
        assert loaded & forbidden == set()
        if "open_worker" in code:
            assert "pipes_bus._worker.api" in loaded
        else:
            assert {m for m in loaded if m.startswith("pipes_bus")} == {
                "pipes_bus",
                "pipes_bus._errors",
                "pipes_bus._version",
            }

    def test_a_worker_on_a_directory_bus_loads_no_fsspec(self, tmp_path: Path) -> None:
        """Reporting over a directory bus needs neither fsspec nor any cloud SDK."""
        s = Session(str(tmp_path / "bus"))
        code = (
            "import sys, pipes_bus\n"
            "with pipes_bus.open_worker() as w: w.report_custom_message(1)\n"
            "print(' '.join(m for m in sys.modules if m.split('.')[0] in "
            "('fsspec','rich','boto3','botocore','s3fs','gcsfs','adlfs','azure','google')))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **s.env},
        )
        assert out.stdout.strip() == ""
        assert payloads(s.wait()) == [1]


class TestManyWorkers:
    def test_short_lived_workers_leave_no_loggers_behind(self, session: Session) -> None:
        """Each worker's logger is freed with it (the logging module keeps every logger
        getLogger hands out), and its records still reach "pipes_bus.worker" handlers."""
        import gc
        import logging

        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        parent = logging.getLogger("pipes_bus.worker")
        handler = Keep()
        parent.addHandler(handler)
        try:
            ids = []
            for i in range(30):
                with pipes_bus.open_worker() as worker:
                    worker.log.info("worker %d", i)
                    ids.append(worker.writer_id)
            del worker
            gc.collect()
        finally:
            parent.removeHandler(handler)
        registered = set(logging.Logger.manager.loggerDict)
        assert not [name for name in registered if any(i in name for i in ids)]
        assert records == [f"worker {i}" for i in range(30)]


class TestReportOrder:
    def test_opened_comes_first_and_closed_last(self, session: Session) -> None:
        """A stream starts with `opened` and ends with `closed` carrying the message count."""
        with pipes_bus.open_worker() as worker:
            for i in range(3):
                worker.report_custom_message(i)
        events = list(session.follow())
        assert isinstance(events[0].message, Opened)  # type: ignore[union-attr]
        last = events[-1].message  # type: ignore[union-attr]
        assert isinstance(last, Closed) and last.count == 4
        assert [e.seq for e in events] == list(range(5))  # type: ignore[union-attr]
