"""A first worker: logs, progress, a materialization, a check and custom messages.

Run it with:  pipes-bus run -- python docs/examples/hello.py
"""

import time

import pipes_bus

with pipes_bus.open_worker() as worker:
    worker.log.info("hello from run %s", worker.context.run_id)
    rows = 0
    for step in range(1, 6):
        rows += 1000
        worker.report_progress(step, 5, unit="batches", label="loading")
        worker.report_custom_message({"step": step, "rows": rows})
        time.sleep(0.1)
    worker.report_materialization("examples/hello", metadata={"rows": rows, "source": "generated"})
    worker.report_check("row_count_positive", rows > 0, asset_key="examples/hello")
    worker.log.info("done: %d rows", rows)
