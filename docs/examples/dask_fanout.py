"""Scale out on Dask: every task of a distributed computation reports into one session.

    python docs/examples/dask_fanout.py s3://my-bucket/pipes-bus

Each task opens its own writer with the session's environment passed explicitly (Dask
workers are long-lived processes the session did not launch). Nothing needs coordination:
every task is its own stream.
"""

from __future__ import annotations

import sys

import pipes_bus
from pipes_bus.orchestrator import SessionResult, open_session


def summarize(part: int, env: dict[str, str]) -> int:
    """One task: report progress per row and a materialization for its partition."""
    with pipes_bus.open_worker(env=env, label=f"part {part}") as worker:
        total = 0
        for row in range(100):
            total += row * part
            worker.report_custom_message({"part": part, "row": row})
        worker.report_materialization(f"parts/{part}", metadata={"total": total})
    return total


def main(bus: str, parts: int = 8) -> tuple[list[int], SessionResult]:
    """Run ``parts`` tasks on a local Dask cluster, all reporting into one session on ``bus``."""
    from dask.distributed import Client, LocalCluster

    with (
        open_session(bus) as session,
        LocalCluster(
            n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(summarize, range(parts), env=session.env)
        totals = client.gather(futures)
        # The tasks are done: every writer has closed, so this returns at once.
        result = session.wait(done=lambda: all(f.done() for f in futures))
    return totals, result


if __name__ == "__main__":
    totals, result = main(sys.argv[1])
    print(f"{len(result.writers)} writers, {len(result.custom_messages)} rows, totals {totals}")
    sys.exit(result.exit_status())
