"""The protocol page is enough to write a worker: a stdlib-only worker reports into a session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipes_bus._wire import keys as _keys
from pipes_bus.messages import IntValue
from pipes_bus.orchestrator import Session

WORKER = Path(__file__).parents[1] / "docs" / "examples" / "stdlib_worker.py"


class TestStdlibWorker:
    @pytest.mark.parametrize("scheme", ["", "file://"], ids=["path", "file-url"])
    def test_a_worker_written_from_the_spec_reports_into_a_session(
        self, tmp_path: Path, scheme: str
    ) -> None:
        """The standard-library worker's stream is read exactly: no faults, every message typed,
        on a bus given as a path or a file:// URL, its label sanitised by the spec's rule."""
        session = Session(
            f"{scheme}{tmp_path / 'bus'}", context={"asset_keys": ["orders"]}, sources=[]
        )
        proc = subprocess.run(
            [sys.executable, str(WORKER)],
            env={"PATH": "/usr/bin:/bin", "PIPES_BUS_LABEL": "rank 3/../x", **session.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert not any(
            line.startswith(("import pipes_bus", "from pipes_bus"))
            for line in WORKER.read_text().splitlines()
        )
        result = session.wait(done=lambda: True, grace=0)
        assert result.ok, result.problems()
        [writer] = result.writers.values()
        assert writer.closed and writer.messages == 7
        assert writer.id.endswith("-stdlib-rank-3-.-x") and writer.label == "rank 3/../x"
        assert _keys.sanitize("rank 3/../x") == "rank-3-.-x"
        assert [e.message.payload for e in result.custom_messages] == [{"n": 0}, {"n": 1}, {"n": 2}]  # type: ignore[union-attr]
        [mat] = result.materializations
        assert mat.message.asset_key == "orders"  # type: ignore[union-attr]
        assert mat.message.metadata == {"rows": IntValue(3)}  # type: ignore[union-attr]
        assert [e.message.message for e in result.logs] == [f"run {session.id}"]  # type: ignore[union-attr]
