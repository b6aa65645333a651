"""Output capture: a worker's stdout and stderr carried through the bus as ``output`` messages."""

from __future__ import annotations

import codecs
import contextlib
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from pipes_bus._errors import PipesBusError
from pipes_bus._wire.schema import Output

if TYPE_CHECKING:
    from pipes_bus._worker.api import Worker

__all__ = ["OUTPUT_PIECE", "OutputCapture"]

OUTPUT_PIECE = 256 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class OutputCapture:
    """Tee this process's stdout and stderr (file descriptors 1 and 2) into the bus."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._threads: list[threading.Thread] = []
        self._saved: list[tuple[int, int]] = []
        self._lost = 0  # characters that could not be carried (the writer failed)
        self._warned = False

    def start(self) -> None:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            stream = sys.stdout if fd == 1 else sys.stderr
            with contextlib.suppress(Exception):
                stream.flush()
            original = os.dup(fd)
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._saved.append((fd, original))
            thread = threading.Thread(
                target=self._pump,
                args=(read_end, original, name),
                daemon=True,
                name=f"pipes-bus-{name}",
            )
            thread.start()
            self._threads.append(thread)

    def _pump(self, read_end: int, original: int, name: str) -> None:
        # Whole lines go out as they come; a line longer than OUTPUT_PIECE goes out in
        # pieces of that size. Nothing is dropped, and no byte is looked at twice.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending: list[str] = []
        size = 0
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while True:
                data = pipe.read(65536)
                if not data:
                    break
                with contextlib.suppress(OSError):  # the real stream may be closed
                    _write_all(original, data)
                text = decoder.decode(data)
                end = text.rfind("\n") + 1
                if end:
                    pending.append(text[:end])
                    self._send(name, "".join(pending))
                    pending = [text[end:]] if end < len(text) else []
                    size = len(text) - end
                else:
                    pending.append(text)
                    size += len(text)
                if size >= OUTPUT_PIECE:
                    self._send(name, "".join(pending))
                    pending, size = [], 0
        rest = "".join(pending) + decoder.decode(b"", final=True)
        if rest:
            self._send(name, rest)

    def _send(self, name: str, text: str) -> None:
        for start in range(0, len(text), OUTPUT_PIECE):
            piece = text[start : start + OUTPUT_PIECE]
            try:
                self._worker._emit(Output(time=time.time(), stream=name, text=piece))  # type: ignore[arg-type]
            except PipesBusError as exc:
                self._lost += len(piece)
                if not self._warned:
                    self._warned = True
                    stderr = dict(self._saved).get(2, 2)
                    with contextlib.suppress(OSError):
                        _write_all(
                            stderr,
                            f"pipes_bus: captured {name} is no longer carried to the bus "
                            f"({exc}); it still goes to the real {name}\n".encode(),
                        )

    def stop(self) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, original in self._saved:
            os.dup2(original, fd)  # closes our pipe's write end: the pump sees EOF
        for thread in self._threads:
            thread.join(timeout=5)
        for _, original in self._saved:
            os.close(original)
        self._saved.clear()
