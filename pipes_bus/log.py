"""The chunked append-only log, for custom runtimes that write or read streams themselves.

A :class:`ChunkWriter` appends one writer's messages (:mod:`pipes_bus.messages`) to its
stream; a :class:`SessionReader` follows every stream of a session. Sessions
(:mod:`pipes_bus.orchestrator`) and workers (:func:`pipes_bus.open_worker`) are built on them.
"""

from __future__ import annotations

from pipes_bus._log.reader import SessionReader
from pipes_bus._log.schedule import RetryPolicy, Schedule
from pipes_bus._log.writer import ChunkWriter, WriterSettings
from pipes_bus._wire.chunk import ChunkHeader

__all__ = [
    "ChunkHeader",
    "ChunkWriter",
    "RetryPolicy",
    "Schedule",
    "SessionReader",
    "WriterSettings",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
