"""The log alone: ChunkWriter and SessionReader in one process, no worker, no CLI.

What it measures: one ChunkWriter appends N custom messages (payload ``{"i": i, "v":
"xxx..."}``, about --payload-bytes bytes as JSON) as fast as the caller can write them,
while a SessionReader in a second thread follows the session and receives them. The
clock runs from the first write until the reader has the writer's ``closed`` message, so
msgs/s is end-to-end throughput of the log (encode, chunk, publish, probe, read,
decode), not just of the writer. MB/s counts the bytes the writer put on the store
(1 MB = 10^6 bytes). Request counts are scaled to 1M messages.

Every configuration (store x encoding x chunk size x payload size) runs --repeat times;
the table shows the run with the median throughput. Each run checks that the reader got
every message exactly once and in order.

Target (issue 2): >= 500,000 msgs/s through memory:// on a 2-core machine.
"""

from __future__ import annotations

import itertools
import secrets
import statistics
import sys
import threading
import time
from typing import Any

from _report import Report, Row, Target, csv, figure, num, parser, save_figure, thousands
from _stores import STORES, Store, open_store

from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Event

TARGET = Target("msgs_per_s", ">=", 500_000, source="issue 2")


def run_once(
    store: Store, encoding: str, chunk_bytes: int, payload_bytes: int, count: int
) -> dict[str, Any]:
    """One writer, one following reader, ``count`` messages; returns the measurements."""
    session = f"s-bench-{secrets.token_hex(6)}"
    write_transport, read_transport = store.transport(), store.transport()
    settings = WriterSettings(encoding=encoding, chunk_bytes=chunk_bytes)
    writer = ChunkWriter(write_transport, session, "w-bench", settings)
    reader = SessionReader(read_transport, session)
    got = {"events": 0, "out_of_order": 0, "faults": 0}

    def follow() -> None:
        expected = 0
        for item in reader.follow():
            if type(item) is Event:
                got["events"] += 1
                got["out_of_order"] += item.seq != expected
                expected = item.seq + 1
            else:
                got["faults"] += 1

    filler = "x" * max(0, payload_bytes - len('{"i":123456,"v":""}'))
    thread = threading.Thread(target=follow, name="reader")
    now = time.time
    write = writer.write
    started = time.perf_counter()
    thread.start()
    for i in range(count):
        write(Custom(time=now(), payload={"i": i, "v": filler}))
    written = time.perf_counter()
    writer.close()
    thread.join()
    elapsed = time.perf_counter() - started

    per_million = 1e6 / count
    requests: dict[str, int] = {}
    for stats in (write_transport.stats, read_transport.stats):
        for kind, n in stats.requests.items():
            requests[kind] = requests.get(kind, 0) + n
    return {
        "msgs_per_s": count / elapsed,
        "write_msgs_per_s": count / (written - started),
        "mb_per_s": writer.bytes_published / elapsed / 1e6,
        "seconds": elapsed,
        "store_bytes": writer.bytes_published,
        "chunks": writer.chunks_published,
        "requests_per_1m": {k: round(v * per_million) for k, v in sorted(requests.items())},
        "received": got["events"],
        "out_of_order": got["out_of_order"],
        "faults": got["faults"],
    }


def measure(
    store: Store, encoding: str, chunk_kib: int, payload_bytes: int, count: int, repeat: int
) -> Row:
    """Run one configuration ``repeat`` times; the row holds the median run."""
    runs = [
        run_once(store, encoding, chunk_kib * 1024, payload_bytes, count) for _ in range(repeat)
    ]
    runs.sort(key=lambda r: r["msgs_per_s"])
    median = runs[len(runs) // 2]
    row = Row(
        "log",
        {
            "store": store.name,
            "encoding": encoding,
            "chunk_kib": chunk_kib,
            "payload_bytes": payload_bytes,
            "messages": count,
            "repeat": repeat,
        },
        metrics={
            **median,
            "msgs_per_s_all": [round(r["msgs_per_s"]) for r in runs],
            "msgs_per_s_spread": statistics.pstdev(r["msgs_per_s"] for r in runs),
        },
        targets=[TARGET] if store.name == "memory" else [],
    )
    for r in runs:
        if r["received"] != count + 1:  # + the writer's `closed`
            row.problems.append(f"reader got {r['received']} messages, expected {count + 1}")
        if r["out_of_order"] or r["faults"]:
            row.problems.append(f"{r['out_of_order']} out of order, {r['faults']} faults")
    return row


def plot(report: Report) -> None:
    """Grouped bars: msgs/s per configuration, one bar per store."""
    stores = list(dict.fromkeys(r.params["store"] for r in report.rows))
    configs = list(
        dict.fromkeys(
            (r.params["encoding"], r.params["chunk_kib"], r.params["payload_bytes"])
            for r in report.rows
        )
    )
    fig, ax = figure(
        "Log throughput (writer + following reader, one process)",
        "encoding / chunk size / payload",
        "messages per second",
    )
    width = 0.8 / max(1, len(stores))
    for s, store in enumerate(stores):
        values = []
        for config in configs:
            match = [
                r
                for r in report.rows
                if r.params["store"] == store
                and (r.params["encoding"], r.params["chunk_kib"], r.params["payload_bytes"])
                == config
            ]
            values.append(match[0].metrics["msgs_per_s"] if match else 0)
        ax.bar([i + s * width for i in range(len(configs))], values, width, label=store)
    ax.axhline(TARGET.limit, color="red", linestyle="--", label="target (memory://)")
    ax.set_xticks([i + width * (len(stores) - 1) / 2 for i in range(len(configs))])
    ax.set_xticklabels([f"{e}\n{c} KiB\n{p} B" for e, c, p in configs])
    thousands(ax.yaxis)
    ax.legend(loc="lower right", framealpha=0.9)
    save_figure(fig, report.path("throughput.png"))


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument(
        "--stores",
        type=csv(str),
        default=["memory", "file"],
        help=f"comma-separated, from: {', '.join(STORES)} (default: memory,file)",
    )
    p.add_argument(
        "--encodings",
        type=csv(str),
        default=["jsonl", "msgpack"],
        help="writer encodings (default: jsonl,msgpack)",
    )
    p.add_argument(
        "--chunk-kib",
        type=csv(int),
        default=[256, 4096],
        help="chunk sizes in KiB (default: 256,4096; 4096 is the writer's default)",
    )
    p.add_argument(
        "--payload-bytes",
        type=csv(int),
        default=[60],
        help="approximate JSON size of each payload (default: 60)",
    )
    p.add_argument("--count", type=int, help="messages per run (default 1,000,000; quick 50,000)")
    p.add_argument(
        "--max-mb",
        type=float,
        default=1024,
        help="cap a run's payload volume: fewer messages for large payloads",
    )
    p.add_argument("--repeat", type=int, help="runs per configuration (default 3; quick 1)")
    args = p.parse_args()
    count = args.count or (50_000 if args.quick else 1_000_000)
    repeat = args.repeat or (1 if args.quick else 3)
    report = Report("log", "bench_log: the log alone (ChunkWriter + following SessionReader)", args)
    for name in args.stores:
        with open_store(name) as store:
            for encoding, chunk_kib, payload in itertools.product(
                args.encodings, args.chunk_kib, args.payload_bytes
            ):
                n = max(1, min(count, int(args.max_mb * 1e6 / max(payload, 1))))
                report.add(measure(store, encoding, chunk_kib, payload, n, repeat))
    plot(report)
    columns = [
        ("store", lambda r: r.params["store"]),
        ("encoding", lambda r: r.params["encoding"]),
        ("chunk", lambda r: f"{r.params['chunk_kib']} KiB"),
        ("payload", lambda r: f"{r.params['payload_bytes']} B"),
        ("messages", lambda r: num(r.params["messages"])),
        ("msgs/s", lambda r: num(r.metrics["msgs_per_s"])),
        ("write msgs/s", lambda r: num(r.metrics["write_msgs_per_s"])),
        ("MB/s", lambda r: num(r.metrics["mb_per_s"], 1)),
        ("runs msgs/s", lambda r: "/".join(f"{v / 1e3:.0f}k" for v in r.metrics["msgs_per_s_all"])),
        (
            "req/1M msgs",
            lambda r: " ".join(f"{k}={v}" for k, v in r.metrics["requests_per_1m"].items()),
        ),
    ]
    return report.finish(columns)


if __name__ == "__main__":
    sys.exit(main())
