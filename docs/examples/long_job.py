"""A long job that reports progress in two phases, then what it produced.

Run it with:  pipes-bus run -- python docs/examples/long_job.py
Make it shorter or longer through the context:
    pipes-bus run --context '{"extras": {"files": 20, "delay": 0.01}}' \
        -- python docs/examples/long_job.py

Stop it with Ctrl-C or SIGTERM and its stream still closes, carrying the interruption.
"""

import time

import pipes_bus

with pipes_bus.open_worker() as worker:
    files = int(worker.context.extra("files", 40))
    delay = float(worker.context.extra("delay", 0.05))

    worker.log.info("downloading %d files", files)
    for n in range(1, files + 1):
        time.sleep(delay)  # stands in for real work
        worker.report_progress(n, files, unit="files", label="download")

    rows = 0
    for _ in range(files):
        time.sleep(delay / 2)
        rows += 1000
        worker.report_progress(rows, files * 1000, unit="rows", label="transform")

    worker.report_materialization("warehouse/daily", metadata={"files": files, "rows": rows})
    worker.log.info("done")
