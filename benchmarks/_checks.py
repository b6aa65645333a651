"""The one event checker (exactly once, in order, per writer) and latency tallies.

:class:`EventCheck` takes events one by one, from an ``--events`` file
(:func:`check_file`) or from a reader in process, for ``writers`` streams that should
each hold ``opened`` at seq 0, ``per_writer`` custom messages ``{"i": 0..N-1}`` (with
``"r": rank`` under fan-in) and a clean ``closed`` last. Every seq and every payload index
is counted, so a report says precisely how many were lost, duplicated, late (out of
order) or unexpected; it counts rather than stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec


class _Line(msgspec.Struct):
    kind: str
    writer: str | None = None
    seq: int | None = None
    payload: Any = None
    exception: Any = None


def _seen(counts: bytearray, index: Any) -> int:
    """How often ``index`` was seen before (-1: not a valid index); counts this time."""
    if type(index) is not int or not 0 <= index < len(counts):
        return -1
    before = counts[index]
    if before < 255:
        counts[index] = before + 1
    return before


class _Stream:
    __slots__ = ("after_closed", "closed", "closed_ok", "customs", "last_i", "last_seq")
    __slots__ += ("late", "opened", "payloads", "rank", "seqs", "unexpected")

    def __init__(self, per_writer: int) -> None:
        self.seqs = bytearray(per_writer + 2)  # times each seq was seen (saturating)
        self.payloads = bytearray(per_writer)  # times each payload index was seen
        self.last_seq = self.last_i = -1
        self.customs = self.late = self.unexpected = self.after_closed = 0
        self.opened = self.closed = self.closed_ok = False
        self.rank: Any = None


class EventCheck:
    """Checks ``writers`` streams of opened + ``per_writer`` customs + closed."""

    def __init__(self, writers: int, per_writer: int) -> None:
        self.writers, self.per_writer = writers, per_writer
        self.streams: dict[str, _Stream] = {}
        self.lines = self.faults = 0

    def add(self, writer: str, seq: int, kind: str, payload: Any = None, exc: Any = None) -> None:
        self.lines += 1
        t = self.streams.get(writer)
        if t is None:
            t = self.streams[writer] = _Stream(self.per_writer)
        if t.closed:
            t.after_closed += 1
        before = _seen(t.seqs, seq)
        if before < 0:
            t.unexpected += 1
        elif before == 0 and seq < t.last_seq:
            t.late += 1
        t.last_seq = max(t.last_seq, seq)
        if kind == "custom":
            t.customs += 1
            p = payload if isinstance(payload, dict) else {}
            i = p.get("i")
            before = _seen(t.payloads, i)
            if before != 0:  # a second copy, or not an index of this workload
                t.unexpected += 1
            elif i < t.last_i:
                t.late += 1
            else:
                t.last_i = i
            if t.rank is None:
                t.rank = p.get("r")
        elif kind == "opened":
            t.opened = seq == 0
        elif kind == "closed":
            t.closed = True
            t.closed_ok = seq == self.per_writer + 1 and exc is None

    def add_event(self, item: Any) -> None:
        """An :class:`~pipes_bus.orchestrator.Event` (or a fault) from a reader in process."""
        message = getattr(item, "message", None)
        if message is None:
            self.faults += 1
            return
        kind = type(message).__struct_config__.tag
        payload = getattr(message, "payload", None)
        self.add(item.writer, item.seq, kind, payload, getattr(message, "exception", None))

    def result(self) -> tuple[dict[str, int], list[str]]:
        """Counts (lines, writers, delivered, lost, duplicates, out_of_order, unexpected,
        faults, errors) and one sentence per kind of problem."""
        streams = self.streams.values()
        expected = self.writers * self.per_writer
        delivered = sum(len(t.payloads) - t.payloads.count(0) for t in streams)
        dup = sum(c - 1 for t in streams for c in t.seqs if c > 1)
        late = sum(t.late for t in streams)
        unexpected = sum(t.unexpected for t in streams)
        unclosed = sum(not (t.opened and t.closed_ok) for t in streams)
        after = sum(t.after_closed for t in streams)
        lost = expected - delivered
        problems = []
        if self.lines != self.writers * (self.per_writer + 2):
            problems.append(
                f"{self.lines:,} events, expected {self.writers * (self.per_writer + 2):,}"
            )
        if len(self.streams) != self.writers:
            problems.append(f"{len(self.streams)} writers, expected {self.writers}")
        if lost or dup or late or unexpected:
            problems.append(
                f"{lost:,} messages lost, {dup:,} duplicated, {late:,} out of order, "
                f"{unexpected:,} unexpected (of {expected:,})"
            )
        wrong = sum(t.customs != self.per_writer for t in streams)
        if wrong:
            problems.append(f"{wrong} writers without exactly {self.per_writer:,} custom messages")
        if unclosed:
            problems.append(f"{unclosed} writers not opened at seq 0 and closed cleanly last")
        if after:
            problems.append(f"{after} events after a writer's closed")
        ranks = sorted(t.rank for t in streams if isinstance(t.rank, int))
        if self.writers > 1 and ranks != list(range(self.writers)):
            problems.append("the writers' ranks are not exactly 0..P-1, once each")
        if self.faults:
            problems.append(f"{self.faults} stream faults")
        counts = {
            "lines": self.lines,
            "writers": len(self.streams),
            "delivered": delivered,
            "lost": lost,
            "duplicates": dup,
            "out_of_order": late,
            "unexpected": unexpected,
            "faults": self.faults,
        }
        counts["errors"] = lost + dup + late + unexpected + self.faults + unclosed + after
        return counts, problems


def line_blocks(path: Path, block: int = 8 << 20) -> Iterator[bytes]:
    """The file in blocks of whole lines (a decoder takes many lines at once)."""
    if not path.exists():
        return
    rest = b""
    with open(path, "rb") as f:
        while data := f.read(block):
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                yield data[:cut]
    if rest:
        yield rest + b"\n"


def check_file(path: Path, writers: int, per_writer: int) -> tuple[dict[str, int], list[str]]:
    """Check the JSON lines ``pipes-bus run --events FILE`` wrote (see :class:`EventCheck`)."""
    check = EventCheck(writers, per_writer)
    decoder = msgspec.json.Decoder(_Line)
    for block in line_blocks(path):
        for e in decoder.decode_lines(block):
            if e.kind == "fault" or e.writer is None or e.seq is None:
                check.faults += 1
            else:
                check.add(e.writer, e.seq, e.kind, e.payload, e.exception)
    return check.result()


class Latencies:
    """Emit-to-receipt latency of trickle messages (payload {"i", "t"}), and which arrived."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.seen: set[int] = set()
        self.duplicates = 0

    def add(self, payload: Any, received: float) -> None:
        if not isinstance(payload, dict) or "t" not in payload:
            return
        self.duplicates += payload["i"] in self.seen
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

    def problems(self, sent: int) -> list[str]:
        lost = sent - len(self.seen)
        return (
            [f"{lost} lost, {self.duplicates} duplicated of {sent}"]
            if lost or self.duplicates
            else []
        )

    def cdf(self, sent: int, points: int = 300) -> list[list[float]]:
        """At most ``points`` [latency ms, share of the messages sent] pairs (the curve ends
        below 1 when messages never arrived): small results files, the whole distribution."""
        values = sorted(self.ms)
        if not values:
            return []
        picks = list(range(0, len(values), max(1, len(values) // points)))
        if picks[-1] != len(values) - 1:
            picks.append(len(values) - 1)
        return [[round(values[i], 1), round((i + 1) / max(sent, 1), 5)] for i in picks]
