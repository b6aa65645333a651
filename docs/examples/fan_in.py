"""Multiprocessing fan-in: every process reports into the same session, as its own writer.

Run it with:  pipes-bus run -- python docs/examples/fan_in.py

The parent opens a writer labelled "main"; each task in the pool opens its own writer
labelled "part-N". Nothing needs coordinating: every writer has a stream of its own.
"""

import multiprocessing

import pipes_bus

PARTS = 8
ROWS_PER_PART = 250


def load_part(part: int) -> int:
    """Process one part in a pool process, reporting as writer "part-N"."""
    with pipes_bus.open_worker(label=f"part-{part}") as worker:
        rows = 0
        for batch in range(5):
            rows += ROWS_PER_PART // 5
            worker.report_custom_message({"part": part, "batch": batch, "rows": rows})
        worker.report_materialization(f"events/part-{part}", metadata={"rows": rows})
        return rows


if __name__ == "__main__":
    with pipes_bus.open_worker(label="main") as worker:
        worker.log.info("loading %d parts", PARTS)
        pool = multiprocessing.Pool(processes=4)
        try:
            totals = pool.map(load_part, range(PARTS))
        finally:
            # close() and join() let the pool's processes exit on their own.
            pool.close()
            pool.join()
        worker.report_materialization("events", metadata={"rows": sum(totals), "parts": PARTS})
        worker.log.info("loaded %d rows", sum(totals))
