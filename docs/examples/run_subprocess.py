"""Run a worker script from Python and act on what it reported.

Run it with:  python docs/examples/run_subprocess.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipes_bus.orchestrator import SessionResult, run_subprocess

JOB = Path(__file__).with_name("subprocess_job.py")


def main(bus: str | None = None) -> SessionResult:
    """Run the job for one partition and print what it reported."""
    result = run_subprocess(
        [sys.executable, str(JOB)],
        bus=bus,  # None: $PIPES_BUS_URL, else a local directory
        context={
            "asset_keys": ["orders"],
            "partition_key": "2024-06-01",
            "extras": {"rows": 1200},
        },
    )
    for event in result.materializations:
        m = event.message
        print(f"materialized {m.asset_key} {m.data_version}: rows={m.metadata['rows'].value}")
    for event in result.checks:
        c = event.message
        print(f"check {c.check_name}: {'passed' if c.passed else 'failed'} ({c.severity})")
    print(f"exit status {result.exit_status()}: {result.reason() or 'ok'}")
    return result


if __name__ == "__main__":
    sys.exit(main().exit_status())
