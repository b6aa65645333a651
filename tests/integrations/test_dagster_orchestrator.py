"""pipes_bus inside Dagster: PipesSubprocessClient with the pipes_bus reader and injector."""

# No `from __future__ import annotations`: Dagster reads the asset's annotations as objects.

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.dagster_workers import write_script

dagster = pytest.importorskip(
    "dagster", reason="dagster is not installed: pip install 'pipes-bus[dagster]'"
)

from dagster import (  # noqa: E402
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    DagsterInstance,
    ExecuteInProcessResult,
    PipesSubprocessClient,
    asset,
    materialize,
)

from pipes_bus.integrations.dagster import (  # noqa: E402
    PipesBusContextInjector,
    PipesBusMessageReader,
)

# Dagster's own code calls APIs it has deprecated (e.g. context.run_id in the Pipes session).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.* is deprecated and will be removed in:DeprecationWarning"
)

WRITER = """
from dagster_pipes import open_dagster_pipes
from pipes_bus.integrations.dagster import PipesBusContextLoader, PipesBusMessageWriter

def pipes():
    return open_dagster_pipes(
        message_writer=PipesBusMessageWriter(), context_loader=PipesBusContextLoader()
    )
"""


class Run:
    """One materialization of asset `orders` whose work is ``body``, run by PipesSubprocessClient."""

    def __init__(
        self,
        tmp_path: Path,
        body: str,
        *,
        checks: Sequence[str] = (),
        extras: dict[str, Any] | None = None,
        reader: PipesBusMessageReader | None = None,
        injector: PipesBusContextInjector | None = None,
    ) -> None:
        self.bus = str(tmp_path / "bus")
        script = write_script(tmp_path, WRITER + body)
        self.reader = reader or PipesBusMessageReader(self.bus, grace=30.0)
        self.custom: list[Any] = []
        specs = [AssetCheckSpec(name, asset="orders") for name in checks]

        @asset(name="orders", check_specs=specs)
        def orders(context: AssetExecutionContext, pipes: PipesSubprocessClient):  # type: ignore[no-untyped-def]
            invocation = pipes.run(
                context=context, command=[sys.executable, str(script)], extras=extras
            )
            self.custom = list(invocation.get_custom_messages())
            return invocation.get_results()

        client = PipesSubprocessClient(
            context_injector=injector or PipesBusContextInjector(self.bus),
            message_reader=self.reader,
            env={"PYTHONPATH": os.pathsep.join(sys.path)},
        )
        with DagsterInstance.ephemeral() as instance:
            self.result: ExecuteInProcessResult = materialize(
                [orders], resources={"pipes": client}, instance=instance, raise_on_error=False
            )
            # Events the Pipes handler reports from the reader's thread are in the
            # instance's event log, not in the in-process result's event list.
            self.engine_messages = [
                entry.dagster_event.message or ""
                for entry in instance.all_logs(self.result.run_id)
                if entry.dagster_event is not None
                and entry.dagster_event.event_type_value == "ENGINE_EVENT"
            ]

    def failure(self) -> str:
        [event] = self.result.get_step_failure_events()
        error = event.step_failure_data.error
        assert error is not None
        return error.to_string()


class TestResults:
    def test_materializations_checks_and_custom_messages_reach_dagsters_results(
        self, tmp_path: Path
    ) -> None:
        """Metadata, data version, a WARN check and 20,000 custom messages arrive, in order, none lost."""
        run = Run(
            tmp_path,
            """
with pipes() as p:
    for i in range(20_000):
        p.report_custom_message(i)
    p.report_asset_materialization(
        metadata={"rows": 20_000, "note": {"raw_value": "**ok**", "type": "md"}},
        data_version="v3",
    )
    p.report_asset_check("not_empty", passed=True, severity="WARN", metadata={"rows": 20_000})
""",
            checks=["not_empty"],
        )
        assert run.result.success
        assert run.custom == list(range(20_000))
        [materialization] = [
            e.event_specific_data.materialization  # type: ignore[union-attr]
            for e in run.result.get_asset_materialization_events()
        ]
        assert materialization.metadata["rows"].value == 20_000
        assert materialization.metadata["note"].value == "**ok**"
        assert materialization.tags is not None
        assert materialization.tags["dagster/data_version"] == "v3"
        [evaluation] = run.result.get_asset_check_evaluations()
        assert (evaluation.check_name, evaluation.passed) == ("not_empty", True)
        assert evaluation.severity == AssetCheckSeverity.WARN
        assert evaluation.metadata["rows"].value == 20_000
        assert run.reader.result is not None and run.reader.result.ok

    def test_the_worker_gets_dagsters_context_through_the_bus(self, tmp_path: Path) -> None:
        """A context over the inline limit is stored on the bus, loaded by the worker, then deleted."""
        extras = {"rows": list(range(5_000))}
        run = Run(
            tmp_path,
            """
with pipes() as p:
    p.report_custom_message([p.asset_key, p.run_id, len(p.get_extra("rows"))])
""",
            extras=extras,
            injector=PipesBusContextInjector(str(tmp_path / "bus"), inline_limit=100),
        )
        assert run.result.success
        assert run.custom == [["orders", run.result.run_id, 5_000]]
        assert not (tmp_path / "bus" / "_dagster-contexts").exists()  # deleted, folder and all

    def test_a_worker_on_dagsters_default_writer_is_heard_too(self, tmp_path: Path) -> None:
        """An unmodified worker (default file writer) still reports through the pipes_bus reader."""
        run = Run(
            tmp_path,
            """
with open_dagster_pipes() as p:
    for i in range(1_000):
        p.report_custom_message(i)
    p.report_asset_materialization(metadata={"rows": 1_000})
""",
        )
        assert run.result.success
        assert run.custom == list(range(1_000))
        [event] = run.result.get_asset_materialization_events()
        assert event.event_specific_data.materialization.metadata["rows"].value == 1_000  # type: ignore[union-attr]


class TestMultiWriter:
    def test_two_processes_report_into_one_dagster_step(self, tmp_path: Path) -> None:
        """Parent and child each open pipes: both streams arrive in full, each in order."""
        write_script(
            tmp_path,
            WRITER
            + """
with pipes() as p:
    for i in range(3_000):
        p.report_custom_message(["child", i])
""",
            name="child.py",
        )
        run = Run(
            tmp_path,
            f"""
import subprocess, sys
with pipes() as p:
    child = subprocess.Popen([sys.executable, {str(tmp_path / "child.py")!r}])
    for i in range(3_000):
        p.report_custom_message(["parent", i])
    assert child.wait() == 0
    p.report_asset_materialization(metadata={{"writers": 2}})
""",
        )
        assert run.result.success
        assert len(run.custom) == 6_000
        for who in ("parent", "child"):
            assert [i for w, i in run.custom if w == who] == list(range(3_000))
        assert run.reader.result is not None
        writers = run.reader.result.writers.values()
        assert len(writers) == 2
        assert all(w.closed and w.exception is None for w in writers)
        assert len(run.result.get_asset_materialization_events()) == 1


class TestFailures:
    def test_an_exception_in_the_worker_fails_the_step_and_reaches_dagster(
        self, tmp_path: Path
    ) -> None:
        """The block raises: the step fails and Dagster records `closed` with the exception."""
        run = Run(
            tmp_path,
            """
with pipes() as p:
    p.report_custom_message("before")
    raise ValueError("bad row")
""",
        )
        assert not run.result.success
        assert "External execution process failed with code 1" in run.failure()
        assert "[pipes] external process pipes closed with exception" in run.engine_messages
        assert run.custom == []  # the step failed before returning its results
        assert run.reader.result is not None
        [failed] = run.reader.result.failed
        assert failed.exception is not None
        assert (failed.exception.type, failed.exception.message) == ("ValueError", "bad row")

    def test_a_failed_child_fails_the_step_even_when_the_command_exits_0(
        self, tmp_path: Path
    ) -> None:
        """A second writer closes with an exception: the reader fails the step and names it."""
        write_script(
            tmp_path,
            WRITER
            + """
with pipes() as p:
    raise RuntimeError("child broke")
""",
            name="child.py",
        )
        run = Run(
            tmp_path,
            f"""
import subprocess, sys
with pipes() as p:
    subprocess.run([sys.executable, {str(tmp_path / "child.py")!r}])
    p.report_asset_materialization()
""",
        )
        assert not run.result.success
        failure = run.failure()
        assert "[pipes_bus] session" in failure
        assert "failed: RuntimeError: child broke" in failure
        assert "[pipes] external process pipes closed with exception" in run.engine_messages

    def test_a_worker_that_never_opens_pipes_gets_dagsters_no_messages_diagnostics(
        self, tmp_path: Path
    ) -> None:
        """Nothing reported: the step succeeds with Dagster's warning, which explains where we looked."""
        run = Run(tmp_path, "print('no pipes here')\n")
        assert run.result.success
        assert run.custom == []
        assert run.reader.session is not None
        assert "PipesBusMessageWriter" in run.reader.no_messages_debug_text()
        assert run.reader.session.id in run.reader.no_messages_debug_text()
