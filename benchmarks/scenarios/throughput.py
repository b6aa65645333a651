"""The log alone, in one process: a ChunkWriter and a following SessionReader, no CLI."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _core import (
    DASH,
    Context,
    Results,
    Row,
    Table,
    Target,
    figure,
    kinds,
    median_run,
    num,
    one,
    pick,
    runs,
    save_figure,
    size,
    thousands,
    verdict,
)
from _stores import Store, open_store

from pipes_bus.log import ChunkWriter, SessionReader, WriterSettings
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import Event

LOG_GOAL = Target(
    "msgs_per_s",
    ">=",
    500_000,
    goal="The log alone moves at least 500,000 small messages/s through memory://",
    shown="{value:,.0f} msgs/s",
    full_only=True,
)


def run_log(
    store: Store, encoding: str, chunk_kib: int, payload: int, count: int
) -> dict[str, Any]:
    """One writer appends ``count`` messages of about ``payload`` bytes (JSON) as fast as it
    can while a reader follows in a thread; the clock stops when the reader has the
    writer's ``closed``. Returns msgs/s, MB/s written, requests per 1M messages, and what
    the reader got (it only counts and checks the order: more would slow the measurement).
    """
    session = f"s-bench-{secrets.token_hex(6)}"
    wt, rt = store.transport(), store.transport()
    settings = WriterSettings(encoding=encoding, chunk_bytes=chunk_kib * 1024)
    writer = ChunkWriter(wt, session, "w-bench", settings)
    reader = SessionReader(rt, session)
    got = {"received": 0, "out_of_order": 0, "faults": 0}

    def follow() -> None:
        expected = 0
        for item in reader.follow():
            if type(item) is Event:
                got["received"] += 1
                got["out_of_order"] += item.seq != expected
                expected = item.seq + 1
            else:
                got["faults"] += 1

    filler = "x" * max(0, payload - len('{"i":123456,"v":""}'))
    thread = threading.Thread(target=follow, name="reader")
    now, write = time.time, writer.write
    started = time.perf_counter()
    thread.start()
    for i in range(count):
        write(Custom(time=now(), payload={"i": i, "v": filler}))
    written = time.perf_counter()
    writer.close()
    thread.join()
    elapsed = time.perf_counter() - started
    requests: dict[str, int] = {}
    for stats in (wt.stats, rt.stats):
        for kind, n in stats.requests.items():
            requests[kind] = requests.get(kind, 0) + n
    return {
        "msgs_per_s": count / elapsed,
        "write_msgs_per_s": count / (written - started),
        "mb_per_s": writer.bytes_published / elapsed / 1e6,
        "payload_mb_per_s": count * payload / elapsed / 1e6,
        "seconds": elapsed,
        "chunks": writer.chunks_published,
        "requests_per_1m": {k: round(v * 1e6 / count) for k, v in sorted(requests.items())},
        "store_bytes_per_1m": round(writer.bytes_published * 1e6 / count),
        **got,
    }


def _problems(metrics: dict[str, Any], count: int) -> list[str]:
    if metrics["received"] == count + 1 and not metrics["out_of_order"] + metrics["faults"]:
        return []  # every message and the writer's closed, in order
    return [
        f"the reader got {metrics['received']:,} of {count + 1:,} messages, "
        f"{metrics['out_of_order']} out of order, {metrics['faults']} faults"
    ]


def log(ctx: Context) -> Iterator[Row]:
    """The log alone: encodings and chunk sizes, memory:// and a local directory

    A ChunkWriter appends small custom messages (``{"i": i, "v": "xx.."}``, about 60 B of
    JSON) as fast as the caller can write, while a SessionReader in a second thread
    follows; msgs/s runs from the first write until the reader has the writer's
    ``closed`` (encode, chunk, publish, probe, read, decode). Each configuration runs
    ``repeat`` times; the row holds the median run.
    """
    count = ctx.opt("count", 1_000_000, quick=50_000)
    repeat = ctx.opt("repeat", 3, quick=1)
    for name in ctx.opt("stores", ["memory", "file"]):
        for encoding in ctx.opt("encodings", ["jsonl", "msgpack"]):
            for kib in ctx.opt("chunk_kib", [256, 4096]):
                done = []
                for _ in range(repeat):
                    with open_store(name) as store:  # a fresh one: memory:// holds it all
                        done.append(run_log(store, encoding, kib, 60, count))
                m = median_run(done, key=lambda r: r["msgs_per_s"])
                m["msgs_per_s_all"] = [round(r["msgs_per_s"]) for r in done]
                params = {
                    "store": name,
                    "encoding": encoding,
                    "chunk_kib": kib,
                    "payload_bytes": 60,
                }
                yield Row(
                    f"{name}, {encoding}, {size(kib * 1024)} chunks",
                    {**params, "messages": count, "repeat": repeat},
                    m,
                    [p for r in done for p in _problems(r, count)],
                    [LOG_GOAL] if name == "memory" else [],
                )


def log_tables(rows: list[Row]) -> dict[str, Table]:
    cells = [
        [
            r.params["store"],
            r.params["encoding"],
            size(r.params["chunk_kib"] * 1024),
            num(r.metrics["msgs_per_s"]),
            runs(r.metrics["msgs_per_s_all"], "{:,.0f}"),
            num(r.metrics["write_msgs_per_s"]),
            num(r.metrics["mb_per_s"], 1),
            kinds(r.metrics["requests_per_1m"]),
            verdict(r),
        ]
        for r in rows
    ]
    headers = ["store", "encoding", "chunk", "msgs/s (median)", "every run"]
    return {"": ([*headers, "write msgs/s", "MB/s", "requests per 1M messages", "goal"], cells)}


def log_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    stores = list(dict.fromkeys(r.params["store"] for r in rows))
    configs = list(dict.fromkeys((r.params["encoding"], r.params["chunk_kib"]) for r in rows))
    fig, ax = figure("The log alone: msgs/s, one process", "encoding / chunk size", "messages/s")
    width = 0.8 / max(1, len(stores))
    for s, store in enumerate(stores):
        found = [one(rows, store=store, encoding=e, chunk_kib=c) for e, c in configs]
        values = [r.metrics["msgs_per_s"] if r else 0 for r in found]
        ax.bar([i + s * width for i in range(len(configs))], values, width, label=store)
    ax.axhline(LOG_GOAL.limit, color="red", linestyle="--", label="goal (memory://)")
    ax.set_xticks([i + width * (len(stores) - 1) / 2 for i in range(len(configs))])
    ax.set_xticklabels([f"{e}\n{size(c * 1024)}" for e, c in configs])
    thousands(ax.yaxis)
    ax.legend(loc="lower right", framealpha=0.9)
    save_figure(fig, path("log.png"))


def throughput(ctx: Context) -> Iterator[Row]:
    """Throughput of every store by message size and chunk size; requests per 1M messages

    The log alone, as above (jsonl), on memory://, a local directory and the local S3,
    Azure and GCS servers: by message size (64 B to 1 MiB) at the default 4 MiB chunk, and
    by chunk size at 1 KiB messages. Each run is capped at ``max_mb`` of payload and
    ``max_count`` messages, so large messages are fewer; requests (writer and reader) and
    bytes written are scaled to 1M messages.
    """
    sizes = ctx.opt("sizes", [64, 1024, 16384, 1048576], quick=[64, 1048576])
    chunks = ctx.opt("chunk_kib", [256, 1024, 16384], quick=[256])
    max_mb, max_count = (
        ctx.opt("max_mb", 32.0, quick=2.0),
        ctx.opt("max_count", 200_000, quick=10_000),
    )
    configs = [(b, 4096) for b in sizes] + [(1024, kib) for kib in chunks if kib != 4096]
    for name in ctx.opt("stores", ["memory", "file", "s3", "azure", "gcs"]):
        with open_store(name) as store:
            for payload, kib in configs:
                count = max(8, min(max_count, int(max_mb * 1e6 / payload)))
                m = run_log(store, "jsonl", kib, payload, count)
                params = {
                    "store": name,
                    "payload_bytes": payload,
                    "chunk_kib": kib,
                    "messages": count,
                }
                label = f"{name}, {size(payload)} messages, {size(kib * 1024)} chunks"
                yield Row(label, params, m, _problems(m, count))


def throughput_tables(rows: list[Row]) -> dict[str, Table]:
    stores = list(dict.fromkeys(r.params["store"] for r in rows))
    sizes = sorted({r.params["payload_bytes"] for r in pick(rows, chunk_kib=4096)})
    chunks = sorted({r.params["chunk_kib"] for r in rows if r.params["payload_bytes"] == 1024})

    def cell(store: str, payload: int, kib: int, show: Callable[[dict[str, Any]], str]) -> str:
        r = one(rows, store=store, payload_bytes=payload, chunk_kib=kib)
        return show(r.metrics) if r else DASH

    def speed(m: dict[str, Any]) -> str:
        return f"{m['msgs_per_s']:,.0f} msgs/s<br>{m['payload_mb_per_s']:,.1f} MB/s"

    def cost(m: dict[str, Any]) -> str:
        total = sum(m["requests_per_1m"].values())
        return (
            f"{total:,} ({kinds(m['requests_per_1m'])})<br>{m['store_bytes_per_1m'] / 1e6:,.0f} MB"
        )

    by_size = [[s, *(cell(s, b, 4096, speed) for b in sizes)] for s in stores]
    by_chunk = [
        [s, *(cell(s, 1024, k, lambda m: num(m["msgs_per_s"])) for k in chunks)] for s in stores
    ]
    requests = [[s, *(cell(s, b, 4096, cost) for b in sizes)] for s in stores]
    return {
        "": (["store", *map(size, sizes)], by_size),
        "chunks": (["store (msgs/s)", *(size(k * 1024) for k in chunks)], by_chunk),
        "requests": (["store", *(f"{size(b)} messages" for b in sizes)], requests),
    }


def throughput_plot(rows: list[Row], _: Results, path: Callable[[str], Path]) -> None:
    stores = list(dict.fromkeys(r.params["store"] for r in rows))
    fig, (ax, ax2) = figure(
        "Throughput by message size (4 MiB chunks)", "payload per message", "", (11, 4.5), 2
    )
    for store in stores:
        mine = sorted(
            pick(rows, store=store, chunk_kib=4096), key=lambda r: r.params["payload_bytes"]
        )
        xs = [r.params["payload_bytes"] for r in mine]
        ax.plot(xs, [r.metrics["msgs_per_s"] for r in mine], marker="o", label=store)
        ax2.plot(xs, [r.metrics["payload_mb_per_s"] for r in mine], marker="o", label=store)
    sizes = sorted({r.params["payload_bytes"] for r in pick(rows, chunk_kib=4096)})
    for a, label in ((ax, "messages per second"), (ax2, "payload MB/s")):
        a.set(xscale="log", yscale="log", ylabel=label)
        a.set_xticks(sizes, [size(s) for s in sizes])
        a.minorticks_off()
    ax.legend()
    save_figure(fig, path("throughput_by_size.png"))
    fig, ax = figure("Throughput by chunk size (1 KiB messages)", "chunk size (KiB)", "messages/s")
    for store in stores:
        mine = sorted(
            (r for r in pick(rows, store=store) if r.params["payload_bytes"] == 1024),
            key=lambda r: r.params["chunk_kib"],
        )
        ax.plot(
            [r.params["chunk_kib"] for r in mine],
            [r.metrics["msgs_per_s"] for r in mine],
            marker="o",
            label=store,
        )
    ax.set_xscale("log", base=2)
    thousands(ax.yaxis)
    ax.legend()
    save_figure(fig, path("throughput_by_chunk.png"))
