"""EventSink: the ``--events`` lines, whether written one by one or in bulk."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipes_bus.cli._events import EventSink
from pipes_bus.messages import Custom, Log, UnknownMessage
from pipes_bus.orchestrator import Event, StreamFault

# Text that is awkward for a line-oriented, %-formatted encoder: newlines, braces, percent
# signs, quotes, backslashes and non-ASCII characters.
awkward = st.text(alphabet=st.sampled_from('a%{}\n"\\\u00e9\u2603 ,:'), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | awkward,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(awkward, inner, max_size=3),
    max_leaves=8,
)
messages = st.one_of(
    st.builds(Custom, time=st.just(1.5), payload=json_values),
    st.builds(Log, time=st.just(2.0), message=awkward),
    st.builds(UnknownMessage, kind=st.just("future"), data=st.dictionaries(awkward, json_values)),
)


@st.composite
def batches(draw: st.DrawFn) -> list[Event | StreamFault]:
    """A poll's worth of items: per-writer runs with increasing seqs, and some faults."""
    items: list[Event | StreamFault] = []
    seqs: dict[str, int] = {}
    for _ in range(draw(st.integers(0, 6))):
        writer = draw(st.sampled_from(["w-a", "w-b", "w%c"]))
        if draw(st.integers(0, 9)) == 0:
            items.append(StreamFault(writer, f"s/{writer}/7", "gap", "lost", (1, 2)))
            continue
        for message in draw(st.lists(messages, min_size=1, max_size=5)):
            seq = seqs[writer] = seqs.get(writer, -1) + 1
            extra = draw(st.none() | st.just({"later": 1}))
            items.append(Event(writer, seq, 0, message, extra))
    return items


def written(add: Any) -> bytes:
    """What an EventSink writes when ``add`` feeds it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        sink = EventSink(str(path))
        add(sink)
        sink.close()
        return path.read_bytes()


@settings(max_examples=200, deadline=None)
@given(batch=batches())
def test_bulk_lines_equal_one_by_one_lines(batch: list[Any]) -> None:
    """add_batch writes byte for byte what add() writes for each item in turn."""

    def one_by_one(sink: EventSink) -> None:
        for item in batch:
            sink.add(item)

    bulk = written(lambda sink: sink.add_batch(batch))
    assert bulk == written(one_by_one)
    lines = [json.loads(line) for line in bulk.splitlines()]
    assert len(lines) == len(batch)
    for line, item in zip(lines, batch, strict=True):
        assert line["writer"] == item.writer
        if isinstance(item, Event):
            assert line["seq"] == item.seq
            if isinstance(item.message, Custom):
                assert line.get("payload") == item.message.payload
        else:
            assert line["kind"] == "fault"
