"""`pipes-bus exec`: any program a writer of its session, its lines output events or reports."""

from __future__ import annotations

import ast
import inspect
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipes_bus._worker.api import Worker
from pipes_bus._worker.exec import (
    LINE_PIECE,
    REPORT_METHODS,
    LineSplitter,
    LogDirective,
    Piece,
    parse_directive,
    wrap,
)
from pipes_bus.orchestrator import Session
from tests.cli.test_cli import events
from tests.cli.test_lifecycle import alive
from tests.helpers import cli, cli_command, wait_until

ROOT = Path(__file__).parents[2]
EXEC_MODULE = ROOT / "pipes_bus" / "cli" / "_exec.py"
NOT_DIRECTIVE = "is not a valid pipes-bus directive, so it was kept as output: "


def exec_under_run(
    tmp_path: Path, *command: str, options: tuple[str, ...] = (), run: tuple[str, ...] = ()
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`pipes-bus run -q ... -- pipes-bus exec OPTIONS -- COMMAND`: the run and its events."""
    out = tmp_path / "events.jsonl"
    proc = cli(
        "run",
        "-q",
        "--bus",
        str(tmp_path / "bus"),
        "--events",
        str(out),
        *run,
        "--",
        *cli_command("exec", *options, "--", *command),
    )
    return proc, events(out)


def script(tmp_path: Path, body: str, name: str = "job.sh") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def plain(event: dict[str, Any]) -> dict[str, Any]:
    """An event without what changes from run to run (time, writer, seq, logger name)."""
    return {k: v for k, v in event.items() if k not in ("time", "writer", "seq", "logger")}


def outputs(evs: list[dict[str, Any]], stream: str) -> list[str]:
    return [e["text"] for e in evs if e["kind"] == "output" and e["stream"] == stream]


def warnings(evs: list[dict[str, Any]]) -> list[str]:
    return [e["message"] for e in evs if e["kind"] == "log" and e["level"] == "warning"]


def closed(evs: list[dict[str, Any]]) -> dict[str, Any]:
    [last] = [e for e in evs if e["kind"] == "closed"]
    return last


REPORTS = r"""echo "first line"
echo "an error line" >&2
echo '::pipes-bus::{"kind": "progress", "current": 3, "total": 10, "unit": "files"}'
echo '::pipes-bus::{"kind": "log", "message": "halfway", "level": "warning", "fields": {"rows": 7}}'
echo '::pipes-bus::{"kind": "custom", "payload": {"step": 1, "tags": ["a", "b"]}}'
echo "second line"
echo '::pipes-bus::{"kind": "materialization", "asset_key": "orders", "metadata": {"rows": 1200, "source": "db"}, "data_version": "v3"}'
echo '::pipes-bus::{"kind": "check", "check_name": "rows_positive", "passed": true, "asset_key": "orders", "severity": "warn", "metadata": {"min": 1}}'
echo "last error" >&2
printf 'no newline at the end'
"""


class TestReports:
    def test_plain_lines_are_output_and_directives_are_reports(self, tmp_path: Path) -> None:
        """A bash script under run + exec: its lines are output events per stream in order,
        its five directives are the five reports with exactly their fields, exit 0."""
        proc, evs = exec_under_run(tmp_path, "bash", script(tmp_path, REPORTS))
        assert proc.returncode == 0, proc.stderr
        assert len({e["writer"] for e in evs}) == 1
        assert [e["seq"] for e in evs] == list(range(12))
        stdout_side = [plain(e) for e in evs if e.get("stream") != "stderr"]
        assert stdout_side[0]["kind"] == "opened"
        assert stdout_side[1:] == [
            {"kind": "output", "stream": "stdout", "text": "first line\n"},
            {"kind": "progress", "current": 3, "total": 10, "unit": "files"},
            {"kind": "log", "message": "halfway", "level": "warning", "fields": {"rows": 7}},
            {"kind": "custom", "payload": {"step": 1, "tags": ["a", "b"]}},
            {"kind": "output", "stream": "stdout", "text": "second line\n"},
            {
                "kind": "materialization",
                "asset_key": "orders",
                "data_version": "v3",
                "metadata": {
                    "rows": {"type": "int", "value": 1200},
                    "source": {"type": "text", "value": "db"},
                },
            },
            {
                "kind": "check",
                "asset_key": "orders",
                "check_name": "rows_positive",
                "passed": True,
                "severity": "warn",
                "metadata": {"min": {"type": "int", "value": 1}},
            },
            {"kind": "output", "stream": "stdout", "text": "no newline at the end"},
            {"kind": "closed", "count": 11},
        ]
        assert outputs(evs, "stderr") == ["an error line\n", "last error\n"]
        [log] = [e for e in evs if e["kind"] == "log"]
        assert log["logger"] == f"pipes_bus.worker.{log['writer']}"
        # The echo is the program's output byte for byte, directive lines included.
        alone = subprocess.run(
            ["bash", script(tmp_path, REPORTS)], capture_output=True, text=True, check=True
        )
        assert proc.stdout == alone.stdout
        assert proc.stderr == "an error line\nlast error\n"

    def test_no_directives_and_no_echo(self, tmp_path: Path) -> None:
        """--no-directives carries a directive line as output; --no-echo prints nothing."""
        line = '::pipes-bus::{"kind": "custom", "payload": 1}'
        proc, evs = exec_under_run(
            tmp_path, "bash", "-c", f"echo '{line}'", options=("--no-directives", "--no-echo")
        )
        assert proc.returncode == 0, proc.stderr
        assert [e["kind"] for e in evs] == ["opened", "output", "closed"]
        assert outputs(evs, "stdout") == [line + "\n"]
        assert (proc.stdout, proc.stderr) == ("", "")

    def test_the_label_names_the_writer(self, tmp_path: Path) -> None:
        """--label is the writer's label, in `opened` and its id."""
        proc, evs = exec_under_run(tmp_path, "true", options=("--label", "rank 3"))
        assert proc.returncode == 0, proc.stderr
        assert evs[0]["info"]["label"] == "rank 3"
        assert evs[0]["writer"].endswith("-rank-3")

    def test_a_session_that_captures_output_carries_each_line_once(self, tmp_path: Path) -> None:
        """Under --capture-output, exec's own echo is not captured again: one event a line."""
        proc, evs = exec_under_run(
            tmp_path, "bash", "-c", "echo one; echo two >&2", run=("--capture-output",)
        )
        assert proc.returncode == 0, proc.stderr
        assert [e["kind"] for e in evs] == ["opened", "output", "output", "closed"]
        assert (outputs(evs, "stdout"), outputs(evs, "stderr")) == (["one\n"], ["two\n"])


MALFORMED = [
    (
        "::pipes-bus::{not json",
        "it is not JSON (JSON is malformed: object keys must be strings (byte 1))",
    ),
    ("::pipes-bus::[1, 2]", "it is not a JSON object but an array"),
    (
        '::pipes-bus::{"message": "x"}',
        'it has no "kind"; give one of log, progress, custom, materialization, check',
    ),
    (
        '::pipes-bus::{"kind": "nope"}',
        "its kind 'nope' is none of log, progress, custom, materialization, check",
    ),
    (
        '::pipes-bus::{"kind": ["log"]}',
        "its kind ['log'] is none of log, progress, custom, materialization, check",
    ),
    (
        '::pipes-bus::{"kind": "progress", "done": 3}',
        "its progress fields are wrong (Object contains unknown field `done`); a progress takes current, total, unit, label",
    ),
    (
        '::pipes-bus::{"kind": "check", "check_name": "c", "passed": "yes"}',
        "its check fields are wrong (Expected `bool`, got `str` - at `$.passed`); a check takes check_name, passed, asset_key, severity, metadata",
    ),
    (
        '::pipes-bus::{"kind": "materialization"}',
        "The context has 0 asset keys ([]); pass asset_key= explicitly.",
    ),
    (
        '::pipes-bus::{"kind": "custom", "payload": ' + "[" * 1000 + "]" * 1000 + "}",
        "it is nested deeper than 100 levels of arrays and objects",
    ),
]


class TestMalformedDirectives:
    def test_each_is_an_output_line_and_one_warning_and_the_run_goes_on(
        self, tmp_path: Path
    ) -> None:
        """Bad JSON, no object, no or unknown kind, wrong fields, no asset key, 1000 levels
        deep: each stays an output line with one warning saying what was wrong; a line of
        their own after each is delivered, and the run exits 0."""
        lines: list[str] = []
        for n, (line, _) in enumerate(MALFORMED):
            lines += [line, f"ok {n}"]
        data = tmp_path / "lines.txt"
        data.write_text("\n".join(lines) + "\n")
        proc, evs = exec_under_run(tmp_path, "cat", str(data), options=("--no-echo",))
        assert proc.returncode == 0, proc.stderr
        assert outputs(evs, "stdout") == [line + "\n" for line in lines]
        assert warnings(evs) == [
            f"stdout line {2 * n + 1} {NOT_DIRECTIVE}{problem}"
            for n, (_, problem) in enumerate(MALFORMED)
        ]
        reported = [e for e in evs if e["kind"] not in ("opened", "output", "closed")]
        assert [e["fields"] for e in reported] == [
            {"stream": "stdout", "line": 2 * n + 1} for n in range(len(MALFORMED))
        ]
        # Each warning follows its line.
        kinds = [e["kind"] for e in evs[1:-1]]
        assert kinds == ["output", "log", "output"] * len(MALFORMED)
        assert closed(evs) == {**closed(evs), "count": len(evs) - 1}
        assert "exception" not in closed(evs)

    def test_a_huge_directive_is_output_in_pieces_with_one_warning(self, tmp_path: Path) -> None:
        """A directive longer than a piece (262144 characters) is carried as output, whole,
        with one warning; the next directive still works."""
        huge = '::pipes-bus::{"kind": "custom", "payload": "' + "x" * 300_000 + '"}'
        data = tmp_path / "lines.txt"
        data.write_text(huge + '\n::pipes-bus::{"kind": "custom", "payload": 2}\n')
        proc, evs = exec_under_run(tmp_path, "cat", str(data), options=("--no-echo",))
        assert proc.returncode == 0, proc.stderr
        texts = outputs(evs, "stdout")
        assert [len(t) for t in texts] == [LINE_PIECE, len(huge) + 1 - LINE_PIECE]
        assert "".join(texts) == huge + "\n"
        assert warnings(evs) == [
            f"stdout line 1 {NOT_DIRECTIVE}it is longer than 262144 characters"
        ]
        assert [e["payload"] for e in evs if e["kind"] == "custom"] == [2]

    def test_a_directive_on_stderr_works_and_a_bad_one_names_stderr(self, tmp_path: Path) -> None:
        """Directives are read on stderr too; a bad one's warning says stderr."""
        proc, evs = exec_under_run(
            tmp_path,
            "bash",
            "-c",
            """echo '::pipes-bus::{"kind": "custom", "payload": "e"}' >&2; echo '::pipes-bus::{' >&2""",
        )
        assert proc.returncode == 0, proc.stderr
        assert [e["payload"] for e in evs if e["kind"] == "custom"] == ["e"]
        assert outputs(evs, "stderr") == ["::pipes-bus::{\n"]
        [warning] = warnings(evs)
        assert warning.startswith(f"stderr line 2 {NOT_DIRECTIVE}it is not JSON (")


class TestOutput:
    def test_a_line_of_several_megabytes_is_split_and_delivered_whole(self, tmp_path: Path) -> None:
        """A 3-million-character line (multi-byte characters split across reads) arrives in
        pieces of 262144 characters that join into the line; the echo is the line too."""
        line = "€" * 1_000_000 + "x" * 2_000_000
        data = tmp_path / "big.txt"
        data.write_text(line + "\nafter\n", encoding="utf-8")
        proc, evs = exec_under_run(tmp_path, "cat", str(data))
        assert proc.returncode == 0, proc.stderr
        texts = outputs(evs, "stdout")
        pieces = -(-(len(line) + 1) // LINE_PIECE)
        assert len(texts) == pieces + 1
        assert [len(t) for t in texts[:-2]] == [LINE_PIECE] * (pieces - 1)
        assert "".join(texts[:-1]) == line + "\n" and texts[-1] == "after\n"
        assert proc.stdout == line + "\nafter\n"

    def test_non_utf8_bytes_arrive_as_replacement_characters(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 become U+FFFD in the events, and pass unchanged in the echo."""
        out = tmp_path / "events.jsonl"
        proc = subprocess.run(
            [
                *cli_command("run", "-q", "--bus", str(tmp_path / "bus"), "--events", str(out)),
                "--",
                *cli_command("exec", "--", "printf", "caf\\xe9 \\xff\\xfe ok\\n"),
            ],
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == b"caf\xe9 \xff\xfe ok\n"
        evs = events(out)
        assert outputs(evs, "stdout") == ["caf\ufffd \ufffd\ufffd ok\n"]


class TestExitStatus:
    def test_a_failing_command_passes_its_status_through(self, tmp_path: Path) -> None:
        """exit 5: `closed` says "bash exited with status 5", exec and run exit 5."""
        proc, evs = exec_under_run(tmp_path, "bash", "-c", "echo working; exit 5")
        assert proc.returncode == 5, proc.stderr
        exception = closed(evs)["exception"]
        assert exception["type"] == "pipes_bus.CommandFailed"
        assert exception["message"] == "bash exited with status 5"
        assert outputs(evs, "stdout") == ["working\n"]
        assert proc.stderr.splitlines() == [
            f"  also: writer {evs[0]['writer']} failed: pipes_bus.CommandFailed: "
            "bash exited with status 5",
            "pipes-bus: the command exited with status 5 (and 1 more)",
        ]

    def test_a_command_killed_by_a_signal_exits_128_plus_it(self, tmp_path: Path) -> None:
        """A command that dies of SIGKILL: `closed` says so, exec and run exit 137."""
        proc, evs = exec_under_run(tmp_path, "bash", "-c", "kill -KILL $$")
        assert proc.returncode == 137, proc.stderr
        assert closed(evs)["exception"]["message"] == "bash died of signal 9 (SIGKILL)"

    @pytest.mark.parametrize(
        ("command", "status", "message"),
        [
            ("no-such-command-x", 127, "Cannot run 'no-such-command-x': no such command on $PATH."),
            ("/no/such/file", 127, "Cannot run '/no/such/file': no such command."),
            (None, 126, "Cannot run '{path}': permission denied (is it an executable file?)."),
        ],
    )
    def test_a_command_that_cannot_start_is_127_or_126_with_one_line(
        self, tmp_path: Path, command: str | None, status: int, message: str
    ) -> None:
        """Not found is 127, not executable 126, as in a shell: one line on stderr, and
        `closed` carries the same sentence."""
        if command is None:
            command = script(tmp_path, "echo never\n", name="not-executable.sh")
            message = message.format(path=command)
        proc, evs = exec_under_run(tmp_path, command)
        assert proc.returncode == status, proc.stderr
        assert proc.stderr.splitlines()[0] == f"pipes-bus: {message}"
        exception = closed(evs)["exception"]
        assert (exception["type"], exception["message"]) == (
            "pipes_bus.CommandFailed",
            message,
        )
        assert [e["kind"] for e in evs] == ["opened", "closed"]

    def test_sigterm_is_passed_on_to_the_commands_group(self, tmp_path: Path) -> None:
        """SIGTERM to exec reaches the command (its trap runs and reports it), and exec
        exits with the status the trap chose."""
        marks = tmp_path / "started"
        body = (
            f'trap \'echo "::pipes-bus::{{\\"kind\\": \\"custom\\", \\"payload\\": \\"TERM\\"}}"; exit 143\' TERM\n'
            f"touch {marks}\nwhile :; do sleep 0.05; done\n"
        )
        with Session(str(tmp_path / "bus"), settle=0.0) as session:
            proc = subprocess.Popen(
                cli_command("exec", "--", "bash", script(tmp_path, body)),
                env={**os.environ, **session.env},
            )
            wait_until(marks.exists, timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 143
            result = session.wait()
        [writer] = result.writers.values()
        assert [e.message.payload for e in result.custom_messages] == ["TERM"]  # type: ignore[union-attr]
        assert writer.exception is not None
        assert writer.exception.message == "bash exited with status 143"


class TestCancel:
    def test_pipes_bus_cancel_terms_the_command_and_the_session_is_7(self, tmp_path: Path) -> None:
        """`pipes-bus cancel`: the command gets SIGTERM (its trap reports it), `closed`
        carries the cancel and its reason, run exits 7, nothing is left running."""
        bus, out, pids = tmp_path / "bus", tmp_path / "events.jsonl", tmp_path / "pids"
        body = (
            'trap \'echo "::pipes-bus::{\\"kind\\": \\"log\\", \\"message\\": \\"got TERM\\"}"; exit 3\' TERM\n'
            f"sleep 600 & echo $$ $! > {pids}\nwait\n"
        )
        run = subprocess.Popen(
            [
                *cli_command("run", "-q", "--bus", str(bus), "--events", str(out), "--"),
                *cli_command("exec", "--", "bash", script(tmp_path, body)),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=60)
        [session] = [p.name for p in bus.iterdir()]
        cancel = cli("cancel", "--bus", str(bus), session, "--reason", "wrong partition")
        assert cancel.returncode == 0, cancel.stderr
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 7, stderr
        evs = events(out)
        assert [(e["kind"], e.get("message")) for e in evs] == [
            ("opened", None),
            ("log", "got TERM"),
            ("closed", None),
        ]
        exception = closed(evs)["exception"]
        assert exception["type"] == "pipes_bus.Cancelled"
        assert exception["message"].startswith("cancelled by ")
        assert exception["message"].endswith(": wrong partition")
        assert not any(alive(int(pid)) for pid in pids.read_text().split())

    def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(self, tmp_path: Path) -> None:
        """Session.cancel(): a command ignoring SIGTERM gets SIGKILL once --grace is over;
        exec ends by SIGTERM, `closed` carries the cancel, the status is 7."""
        pids = tmp_path / "pids"
        body = f"trap '' TERM\nsleep 600 & echo $$ $! > {pids}\nwhile :; do sleep 0.05; done\n"
        with Session(str(tmp_path / "bus"), settle=0.0) as session:
            proc = subprocess.Popen(
                cli_command("exec", "--grace", "1", "--", "bash", script(tmp_path, body)),
                env={**os.environ, **session.env},
            )
            wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, timeout=60)
            request = session.cancel("scale down")
            assert proc.wait(timeout=60) == -signal.SIGTERM
            result = session.wait()
        [writer] = result.writers.values()
        assert writer.exception is not None
        assert (writer.exception.type, writer.exception.message) == (
            "pipes_bus.Cancelled",
            f"cancelled by {request.by}: scale down",
        )
        assert result.exit_status() == 7
        assert not any(alive(int(pid)) for pid in pids.read_text().split())


class TestUsage:
    def test_no_command_is_exit_2_with_one_line(self) -> None:
        """`pipes-bus exec` alone: exit 2, one line saying what to give."""
        proc = cli("exec")
        assert proc.returncode == 2
        assert proc.stderr == (
            "pipes-bus: Give a command to run after --, e.g. pipes-bus exec -- bash job.sh\n"
        )

    def test_outside_a_session_is_exit_2_with_one_line(self) -> None:
        """Without $PIPES_BUS_SESSION: exit 2, one line, and the command is not run."""
        proc = cli("exec", "--", "echo", "never", env={"PIPES_BUS_SESSION": ""})
        assert proc.returncode == 2
        assert proc.stdout == ""
        assert proc.stderr == (
            "pipes-bus: PIPES_BUS_SESSION is not set: pipes-bus exec runs COMMAND as a writer "
            "of the session in its environment, and there is none. Start it under a session, "
            "e.g. `pipes-bus run -- pipes-bus exec -- COMMAND`, or with a session's env.\n"
        )

    def test_a_negative_grace_is_exit_2(self) -> None:
        """--grace -1 is refused in one line."""
        proc = cli("exec", "--grace", "-1", "--", "true")
        assert proc.returncode == 2
        assert proc.stderr == "pipes-bus: --grace must be seconds (0 or more), not -1.0.\n"

    def test_help_shows_the_line_form_and_an_example(self) -> None:
        """`exec --help` documents the directive form, the kinds, exit statuses, an example."""
        proc = cli("exec", "--help")
        assert proc.returncode == 0
        for text in (
            '::pipes-bus::{"kind": "progress", "current": 3, "total": 10, "unit": "files"}',
            "kind is log, progress, custom, materialization or check",
            "127   COMMAND was not found",
            "pipes-bus run -- pipes-bus exec --label etl -- bash etl.sh",
        ):
            assert text in proc.stdout


class TestPieces:
    def test_directive_fields_are_the_report_methods_keyword_arguments(self) -> None:
        """Each directive kind takes exactly the parameters of its Worker method, by name."""
        for struct, method in REPORT_METHODS.items():
            params = list(inspect.signature(getattr(Worker, method)).parameters)[1:]
            assert list(struct.__struct_fields__) == params, method
        assert LogDirective.__struct_fields__ == ("message", "level", "fields")

    def test_every_directive_in_the_docs_is_valid(self) -> None:
        """The directive lines shown in the protocol and worker guides parse; the protocol
        page shows one of each kind, in order."""
        shown = {
            page: re.findall(r"(::pipes-bus::\{\".*\})", (ROOT / "docs" / page).read_text())
            for page in ("protocol.md", "worker.md")
        }
        parsed = {page: [parse_directive(line) for line in lines] for page, lines in shown.items()}
        assert [type(d).__name__ for d in parsed["protocol.md"]] == [
            "LogDirective",
            "ProgressDirective",
            "CustomDirective",
            "MaterializationDirective",
            "CheckDirective",
        ]
        assert [type(d).__name__ for d in parsed["worker.md"]] == [
            "ProgressDirective",
            "MaterializationDirective",
            "LogDirective",
        ]

    def test_the_splitter_keeps_lines_whole_and_bounds_pieces(self) -> None:
        """Lines come out whole; a longer one in pieces of the limit; joined, the text."""
        lines = LineSplitter(limit=4)
        assert lines.feed("ab\ncdefghij\nk") == [
            Piece("ab\n", True, True),
            Piece("cdef", True, False),
            Piece("ghij", False, False),
            Piece("\n", False, True),
        ]
        assert lines.feed("lm\n") == [Piece("klm\n", True, True)]
        assert lines.feed("no end") == [Piece("no e", True, False)]
        assert lines.finish() == [Piece("nd", False, True)]
        assert lines.finish() == []

    def test_wrap_puts_exec_in_front_of_a_command(self) -> None:
        """wrap() is the argv a launcher starts: python -m pipes_bus exec [--label] -- cmd."""
        assert wrap(["bash", "job.sh"]) == [
            sys.executable,
            "-m",
            "pipes_bus",
            "exec",
            "--",
            "bash",
            "job.sh",
        ]
        assert wrap(["a"], python="py", label="x") == [
            "py",
            "-m",
            "pipes_bus",
            "exec",
            "--label",
            "x",
            "--",
            "a",
        ]

    def test_the_cli_module_imports_only_the_standard_library(self) -> None:
        """pipes_bus/cli/_exec.py builds the parser: at module level it imports stdlib only."""
        tree = ast.parse(EXEC_MODULE.read_text())
        names = [
            alias.name if isinstance(node, ast.Import) else node.module or ""
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        ]
        assert names and all(
            n.split(".")[0] in sys.stdlib_module_names or n == "__future__" for n in names
        ), names

    def test_the_worker_module_loads_no_orchestrator_reader_or_asyncio(self) -> None:
        """Importing pipes_bus._worker.exec (for wrap, or to run) loads only the worker side."""
        code = (
            "import sys, pipes_bus._worker.exec\n"
            "print(' '.join(m for m in sys.modules if m.startswith(('pipes_bus.', 'asyncio'))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        assert "pipes_bus._worker.exec" in out
        assert not [
            m
            for m in out
            if m.startswith(("pipes_bus._orchestrator", "pipes_bus._log.reader", "asyncio"))
        ], out
