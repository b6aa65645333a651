"""Small worker programs the tests launch as real subprocesses."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from pipes_bus.orchestrator import SessionResult, run_subprocess


def write_script(tmp_path: Path, body: str, name: str = "worker.py") -> Path:
    """Write a worker program (dedented) and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_script(
    tmp_path: Path, body: str, *, bus: str | None = None, **options: Any
) -> SessionResult:
    """Run ``body`` as ``python worker.py`` in a fresh session on a directory bus."""
    script = write_script(tmp_path, body)
    options.setdefault("grace", 30.0)
    return run_subprocess(
        [sys.executable, str(script)], bus=bus or str(tmp_path / "bus"), **options
    )


def payloads(result: SessionResult) -> list[Any]:
    """Every custom payload, in delivery order."""
    return [e.message.payload for e in result.custom_messages]  # type: ignore[union-attr]
