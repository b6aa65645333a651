"""What a follower hands out: events, faults, and the cursors to resume from.

No ``from __future__ import annotations`` here: these Structs are published on
:mod:`pipes_bus.orchestrator`, and msgspec must not have to resolve their annotations there.
"""

import itertools
import operator
from typing import Any, Union

import msgspec

from pipes_bus._wire.schema import Closed, Custom, ExceptionInfo, Message, UnknownMessage

__all__ = [
    "Event",
    "Item",
    "SessionCursor",
    "StreamCursor",
    "StreamFault",
    "WriterSummary",
    "split_custom",
]


class Event(msgspec.Struct, frozen=True, gc=False):
    """One delivered message: who wrote it, its index in that writer's stream, and the chunk."""

    writer: str
    seq: int
    chunk: int
    message: Message | UnknownMessage
    unknown_fields: dict[str, Any] | None = None


class StreamFault(msgspec.Struct, frozen=True):
    """Something in a stream that could not be delivered, and why.

    ``reason`` is one of: corrupt, truncated, foreign, gap, too_large, newer_protocol,
    unauthenticated. ``lost`` is the (first, last) message indices known to be lost.
    """

    writer: str
    key: str
    reason: str
    detail: str
    lost: tuple[int, int] | None = None

    def __str__(self) -> str:
        return f"{self.reason} at {self.key}: {self.detail}"


Item = Union[Event, StreamFault]  # noqa: UP007


class StreamCursor(msgspec.Struct):
    """Where to resume one stream: the chunk holding ``seq``, the next undelivered index."""

    chunk: int = 0
    seq: int = 0
    closed: bool = False


_message = operator.attrgetter("message")


def split_custom(batch: list[Event | StreamFault]) -> tuple[list[Event], list[Event | StreamFault]]:
    """The custom-message events of ``batch``, and everything else, each in order.

    A burst is millions of custom messages: this runs in C, not once per item in Python.
    """
    if StreamFault in set(map(type, batch)):
        customs: list[Event] = []
        others: list[Event | StreamFault] = []
        for item in batch:
            if type(item) is Event and type(item.message) is Custom:
                customs.append(item)
            else:
                others.append(item)
        return customs, others
    events: list[Event] = batch  # type: ignore[assignment]  # no fault: all Events
    kinds = list(map(type, map(_message, events)))
    customs = list(itertools.compress(events, map(operator.is_, kinds, itertools.repeat(Custom))))
    if len(customs) == len(events):
        return customs, []
    rest = itertools.compress(events, map(operator.is_not, kinds, itertools.repeat(Custom)))
    return customs, list(rest)


class WriterSummary(msgspec.Struct, omit_defaults=True):
    """What a follower knew of one writer when it saved its cursor."""

    label: str | None = None
    pid: int | None = None
    host: str | None = None
    opened: bool = False
    closed: bool = False
    exception: ExceptionInfo | None = None
    messages: int = 0
    last_seq: int | None = None
    last_kind: str | None = None
    heartbeat: float | None = None
    last_heard: float | None = None
    beats: int = 0
    lost: bool = False
    lost_at: float | None = None


class SessionCursor(msgspec.Struct, omit_defaults=True):
    """A resumable position in every stream of a session. Save it with :meth:`dumps`.

    A session's cursor (:meth:`~pipes_bus.orchestrator.Session.checkpoint`) also carries what
    its follower knew: each writer's state, the faults and the counts so far, so that one
    that takes over ends with the status the first one would have.
    """

    session: str
    streams: dict[str, StreamCursor] = {}
    writers: dict[str, WriterSummary] = {}
    faults: list[StreamFault] = []
    counts: dict[str, int] = {}

    def advance(self, event: Event) -> None:
        """Mark ``event`` as consumed."""
        cursor = self.streams.get(event.writer)
        if cursor is None:
            cursor = self.streams[event.writer] = StreamCursor()
        cursor.chunk = event.chunk
        cursor.seq = event.seq + 1
        if type(event.message) is Closed:
            cursor.closed = True

    def dumps(self) -> bytes:
        """The cursor as JSON."""
        return msgspec.json.encode(self)

    @classmethod
    def loads(cls, data: bytes | str) -> "SessionCursor":
        """A cursor saved with :meth:`dumps`."""
        return msgspec.json.decode(data, type=cls)
