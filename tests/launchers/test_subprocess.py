"""The subprocess launcher (the default) through the launchers' end-to-end suite."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.launchers.end_to_end import EARLY, Case, LauncherEndToEnd, script


class TestSubprocess(LauncherEndToEnd):
    """A local command: its output reaches the terminal directly, not the session."""

    @pytest.fixture
    def case(self, tmp_path: Path) -> Case:
        return Case("subprocess", {}, {}, str(tmp_path / "bus"))

    def test_a_job_that_dies_before_opening_shows_why(self, case: Case, tmp_path: Path) -> None:
        """A command that exits 3 before open_worker(): exit 3, its output on the terminal."""
        out = tmp_path / "events.jsonl"
        proc = case.run(sys.executable, script(tmp_path, "early.py", EARLY), events=out)
        assert proc.returncode == 3, proc.stderr
        assert "loading the data" in proc.stdout
        assert "no such table: orders" in proc.stderr
