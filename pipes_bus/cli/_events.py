"""``--events``: every received item as one JSON object per line, flushed as it arrives."""

from __future__ import annotations

import os
import re
import sys
from typing import IO, Any

import msgspec

from pipes_bus._log.items import Event, StreamFault
from pipes_bus._wire.schema import UnknownMessage

__all__ = ["EventSink"]


_LINE_START = re.compile(rb'^\{"writer":("(?:[^"\\]|\\.)*"),"seq":(\d+)', re.MULTILINE)


def _resume_from(path: str) -> dict[str, int]:
    """The last seq of each writer already in an events file, after cutting a torn last line.

    A follower killed between writing events and saving its cursor would otherwise
    write those events twice when it resumes; this makes resuming exactly-once.
    """
    try:
        with open(path, "r+b") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                f.truncate(end)
                data = data[:end]
    except FileNotFoundError:
        return {}
    seen: dict[str, int] = {}
    for match in _LINE_START.finditer(data):
        writer = msgspec.json.decode(match.group(1))
        seen[writer] = max(seen.get(writer, -1), int(match.group(2)))
    return seen


def _plain(item: Event | StreamFault) -> bool:
    return (
        type(item) is Event
        and type(item.message) is not UnknownMessage
        and item.unknown_fields is None
    )


class EventSink:
    """Writes events as JSON Lines: ``kind``, ``writer``, ``seq`` plus the message's fields."""

    def __init__(self, target: str, *, resume: bool = False) -> None:
        self._own = target != "-"
        # With resume, events already in the file are not written again (see _resume_from).
        self.seen: dict[str, int] = _resume_from(target) if resume and self._own else {}
        self._file: IO[bytes] = open(target, "ab") if self._own else sys.stdout.buffer  # noqa: SIM115
        self._encoder = msgspec.json.Encoder()
        self._lines: list[bytes] = []
        self._names: dict[str, bytes] = {}
        self.written = 0
        self.broken = False

    def add(self, item: Event | StreamFault) -> None:
        """Queue one item; :meth:`flush` writes the queue."""
        encode = self._encoder.encode
        if type(item) is Event:
            message: Any = item.message
            if type(message) is UnknownMessage:
                body = encode({**message.data, "kind": message.kind, "unknown": True})
            else:
                body = encode(message)
            head = b'{"writer":' + encode(item.writer) + b',"seq":' + str(item.seq).encode()
            if item.unknown_fields:
                head += b',"unknown_fields":' + encode(item.unknown_fields)
            self._lines.append(head + (b"," + body[1:] if len(body) > 2 else b"}") + b"\n")
        else:
            assert isinstance(item, StreamFault)
            self._lines.append(
                encode(
                    {
                        "kind": "fault",
                        "writer": item.writer,
                        "seq": None,
                        "key": item.key,
                        "reason": item.reason,
                        "detail": item.detail,
                        "lost": item.lost,
                    }
                )
                + b"\n"
            )

    def add_batch(self, batch: list[Event | StreamFault]) -> None:
        """Queue a poll's worth of items; runs of plain events are encoded in bulk."""
        if self.seen:
            seen = self.seen
            batch = [
                item
                for item in batch
                if type(item) is not Event or item.seq > seen.get(item.writer, -1)
            ]
        i, n = 0, len(batch)
        while i < n:
            j = i
            while j < n and _plain(batch[j]):
                j += 1
            if j == i:
                self.add(batch[i])
                i += 1
                continue
            run: list[Any] = batch[i:j]
            body = self._encoder.encode_lines([e.message for e in run])
            names = self._names
            lines = []
            for event, line in zip(run, body.split(b"\n")[:-1], strict=True):
                name = names.get(event.writer)
                if name is None:
                    name = names[event.writer] = self._encoder.encode(event.writer)
                lines.append(b'{"writer":%s,"seq":%d,%s\n' % (name, event.seq, line[1:]))
            self._lines.extend(lines)
            i = j

    def flush(self) -> None:
        """Write and flush everything queued.

        If the reader of ``--events -`` goes away (``| head``), events stop being written
        and the session carries on: the worker is not made to fail for it.
        """
        if self.broken:
            self._lines.clear()
            return
        try:
            if self._lines:
                self._file.write(b"".join(self._lines))
                self.written += len(self._lines)
            self._file.flush()
        except BrokenPipeError:
            self.broken = True
            # Point stdout at nothing, so the interpreter's final flush does not fail too.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            print(
                "pipes-bus: the --events reader closed its end; no more events written",
                file=sys.stderr,
            )
        self._lines.clear()

    def close(self) -> None:
        """Flush, and close the file if it is not stdout."""
        self.flush()
        if self._own:
            self._file.close()
