"""Checking an ``--events`` file: exactly once, in order, per writer; and latency tallies.

:func:`verify_events` reads the JSON lines ``pipes-bus run --events FILE`` wrote and checks,
for every writer stream, that it opened at seq 0, that seqs follow each other without a
gap or a repeat, that custom payloads ``{"i": 0..N-1}`` come once each and in order, and
that it closed cleanly last. It counts rather than stops, so a report can say "3 lost,
0 duplicated" precisely.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec


class _Line(msgspec.Struct):
    kind: str
    writer: str | None = None
    seq: int | None = None
    payload: Any = None
    exception: Any = None


@dataclass
class StreamTally:
    """What one writer's stream held."""

    next_seq: int = 0
    next_i: int = 0
    customs: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    gaps: int = 0  # seqs skipped (lost)
    out_of_order: int = 0
    opened: bool = False
    closed_ok: bool = False
    after_closed: int = 0


def line_blocks(path: Path, block: int = 8 << 20) -> Iterator[bytes]:
    """The file in blocks of whole lines (a decoder takes many lines at once)."""
    rest = b""
    if not path.exists():
        return
    with open(path, "rb") as f:
        while data := f.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield data[:cut]
    if rest:
        yield rest + b"\n"


def verify_events(path: Path, writers: int, per_writer: int) -> tuple[dict[str, int], list[str]]:
    """Check ``writers`` streams of opened + ``per_writer`` customs ({"i": 0..}) + closed.

    Returns counts (lines, writers, delivered, duplicates, lost, out_of_order, faults,
    errors) and one sentence per kind of problem.
    """
    decoder = msgspec.json.Decoder(_Line)
    streams: dict[str, StreamTally] = {}
    lines = faults = 0
    for block in line_blocks(path):
        for e in decoder.decode_lines(block):
            lines += 1
            if e.kind == "fault" or e.writer is None or e.seq is None:
                faults += 1
                continue
            t = streams.get(e.writer)
            if t is None:
                t = streams[e.writer] = StreamTally()
            if t.closed_ok:
                t.after_closed += 1
            if e.seq < t.next_seq:
                t.duplicates += 1
                continue
            if e.seq > t.next_seq:
                t.gaps += e.seq - t.next_seq
            t.next_seq = e.seq + 1
            if e.kind == "opened":
                t.opened = e.seq == 0
            elif e.kind == "closed":
                t.closed_ok = e.exception is None
            elif e.kind == "custom":
                i = e.payload.get("i") if isinstance(e.payload, dict) else None
                if not isinstance(i, int):
                    continue
                if i in t.seen:
                    t.duplicates += 1
                    continue
                t.seen.add(i)
                t.customs += 1
                if i != t.next_i:
                    t.out_of_order += 1
                t.next_i = i + 1
    delivered = sum(t.customs for t in streams.values())
    duplicates = sum(t.duplicates for t in streams.values())
    out_of_order = sum(t.out_of_order for t in streams.values())
    lost = max(0, writers * per_writer - delivered)
    unclosed = [w for w, t in streams.items() if not (t.opened and t.closed_ok)]
    problems = []
    if len(streams) != writers:
        problems.append(f"{len(streams)} writers, expected {writers}")
    if lost or duplicates or out_of_order:
        problems.append(
            f"{lost:,} messages lost, {duplicates:,} duplicated, "
            f"{out_of_order:,} out of order (of {writers * per_writer:,})"
        )
    if unclosed:
        problems.append(f"{len(unclosed)} writers not opened at seq 0 and closed cleanly")
    late = sum(t.after_closed for t in streams.values())
    if late:
        problems.append(f"{late} events after a writer's closed")
    if faults:
        problems.append(f"{faults} stream faults")
    counts = {
        "lines": lines,
        "writers": len(streams),
        "delivered": delivered,
        "duplicates": duplicates,
        "lost": lost,
        "out_of_order": out_of_order,
        "faults": faults,
        "errors": lost + duplicates + out_of_order + faults + len(unclosed) + late,
    }
    return counts, problems


class Latencies:
    """Emit-to-receipt latency of trickle messages (payload {"i", "t"}), and which arrived."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.seen: set[int] = set()
        self.duplicates = 0

    def add(self, payload: Any, received: float) -> None:
        if not isinstance(payload, dict) or "t" not in payload:
            return
        if payload["i"] in self.seen:
            self.duplicates += 1
        self.seen.add(payload["i"])
        self.ms.append((received - payload["t"]) * 1000)

    def line_handler(self) -> Any:
        """An ``on_line`` callback for ``pipes-bus run --events -`` output."""
        decoder = msgspec.json.Decoder(_Line)

        def on_line(line: bytes, received: float) -> None:
            event = decoder.decode(line)
            if event.kind == "custom":
                self.add(event.payload, received)

        return on_line


def cdf(ms: list[float], sent: int, points: int = 300) -> list[list[float]]:
    """At most ``points`` [latency ms, share of the messages sent] pairs of a latency CDF.

    Keeps the results files small while a plot still shows the whole distribution
    (including the messages that never arrived: the curve then ends below 1).
    """
    values = sorted(ms)
    if not values:
        return []
    step = max(1, len(values) // points)
    picks = list(range(0, len(values), step))
    if picks[-1] != len(values) - 1:
        picks.append(len(values) - 1)
    return [[round(values[i], 1), round((i + 1) / max(sent, 1), 5)] for i in picks]
