"""A worker that a Python orchestrator launches: it reads its context and reports back.

Launched by run_subprocess.py; on its own, run it with:
    pipes-bus run --context '{"asset_keys": ["orders"], "partition_key": "2024-06-01",
        "extras": {"rows": 1200}}' -- python docs/examples/subprocess_job.py
"""

import pipes_bus

with pipes_bus.open_worker() as worker:
    context = worker.context
    rows = int(context.extra("rows", 100))
    worker.log.info("building %s for partition %s", context.asset_key, context.partition_key)
    worker.report_materialization(
        metadata={"rows": rows, "partition": context.partition_key or "-"},
        data_version=f"v{rows}",
    )
    worker.report_check("has_rows", rows > 0, metadata={"rows": rows})
    worker.report_check("under_limit", rows < 1000, severity="warn", metadata={"limit": 1000})
