"""The Dask cookbook example: a LocalCluster's tasks all report into one session on S3."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

pytest.importorskip("distributed")

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "dask_fanout.py"


class TestDaskFanout:
    def test_every_task_reports_into_one_session_over_s3(
        self, s3_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Eight Dask tasks on two worker processes: eight closed streams, every row once."""
        # Dask's worker processes import the tasks' module by name: let them find it.
        folder = str(EXAMPLE.parent)
        monkeypatch.syspath_prepend(folder)
        monkeypatch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
        )
        module = importlib.import_module("dask_fanout")
        totals, result = module.main(s3_url, parts=8)
        assert totals == [sum(range(100)) * part for part in range(8)]
        assert result.ok, result.problems()
        assert sorted(w.label for w in result.writers.values()) == [f"part {p}" for p in range(8)]
        rows = sorted(
            (e.message.payload["part"], e.message.payload["row"]) for e in result.custom_messages
        )
        assert rows == [(p, r) for p in range(8) for r in range(100)]
        assert sorted(e.message.asset_key for e in result.materializations) == [
            f"parts/{p}" for p in range(8)
        ]
