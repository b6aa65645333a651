"""Launch a worker yourself and follow its events live with open_session.

Run it with:  python docs/examples/follow_session.py

This is what run_subprocess does for you; use it when something else starts the work
(a container, a cluster job, a queue): hand it session.env, then follow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipes_bus.messages import Progress
from pipes_bus.orchestrator import Event, SessionResult, StreamFault, open_session

JOB = Path(__file__).with_name("long_job.py")


def main(bus: str | None = None) -> SessionResult:
    """Start long_job.py with the session's environment and print its progress live."""
    with open_session(bus, context={"extras": {"files": 10, "delay": 0.01}}) as session:
        process = subprocess.Popen(
            [sys.executable, str(JOB), *session.args],
            env={**os.environ, **session.env},
        )
        for item in session.follow(done=lambda: process.poll() is not None):
            if isinstance(item, StreamFault):
                print(f"fault: {item}")
            elif isinstance(item, Event) and isinstance(item.message, Progress):
                p = item.message
                if p.current == p.total:
                    print(f"{p.label} finished: {p.current:g} {p.unit}")
        result = session.result
        result.exit_code = process.wait()
    print(f"{len(result.writers)} writer(s); exit status {result.exit_status()}")
    return result


if __name__ == "__main__":
    sys.exit(main().exit_status())
