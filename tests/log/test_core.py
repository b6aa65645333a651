"""The reader core, run with no store and no clock: requests out, outcomes in."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from pipes_bus import PermanentStoreError, TransientStoreError, UnreadableObjectError
from pipes_bus._log.core import Get, List, Prefetch, ReaderCore
from pipes_bus._wire.chunk import build_chunk
from pipes_bus._wire.keys import chunk_key, streams_prefix
from pipes_bus.messages import Custom
from pipes_bus.orchestrator import StreamFault

S = "s"


def chunk(writer: str, n: int, first: int, messages: list[Any], final: bool = False) -> bytes:
    """A chunk as a writer would publish it."""
    body = b"".join(msgspec.json.encode(m) + b"\n" for m in messages)
    return build_chunk(
        writer=writer, chunk=n, first=first, count=len(messages), body=body, final=final
    )


class Script:
    """Answers a pass's requests from a dict of keys and listings, recording each request."""

    def __init__(self, objects: dict[str, Any], listings: dict[str, Any]) -> None:
        self.objects = objects
        self.listings = listings
        self.requests: list[Any] = []

    def run(self, pass_: Any, now: float = 0.0) -> Any:
        try:
            request = next(pass_)
            while True:
                self.requests.append(request)
                if type(request) is Get:
                    outcome = self.objects.get(request.key)
                elif type(request) is List:  # as a store lists: only names after `after`
                    listed = self.listings.get(request.prefix, [])
                    after = request.after
                    outcome = listed if after is None else [n for n in listed if n > after]
                else:
                    outcome = None
                request = pass_.send((outcome, now))
        except StopIteration as stop:
            return stop.value


class TestReaderCore:
    def test_a_first_pass_lists_then_reads_each_stream_in_order(self) -> None:
        """The first pass lists the streams, then gets each chunk until one is missing."""
        key0, key1 = chunk_key(S, "w", 0), chunk_key(S, "w", 1)
        script = Script(
            {
                key0: chunk("w", 0, 0, [Custom(payload=1)]),
                key1: chunk("w", 1, 1, [Custom(payload=2)]),
            },
            {streams_prefix(S): ["w"]},
        )
        core = ReaderCore(S, discover_interval=0)
        items = script.run(core.poll(0.0))
        assert [(e.seq, e.message.payload) for e in items] == [(0, 1), (1, 2)]
        assert script.requests == [
            List(streams_prefix(S)),
            Get(key0, core.max_chunk_bytes, "w"),
            Get(key1, core.max_chunk_bytes, "w"),
            Get(chunk_key(S, "w", 2), core.max_chunk_bytes, "w"),
        ]

    def test_with_read_ahead_the_next_chunk_is_prefetched_before_decoding(self) -> None:
        """On a remote store the core asks for chunk n+1 to be started before it decodes n."""
        key0 = chunk_key(S, "w", 0)
        script = Script({key0: chunk("w", 0, 0, [Custom(payload=1)])}, {streams_prefix(S): ["w"]})
        core = ReaderCore(S, discover_interval=0, read_ahead=True)
        script.run(core.poll(0.0))
        assert script.requests[1:3] == [
            Get(key0, core.max_chunk_bytes, "w"),
            Prefetch(Get(chunk_key(S, "w", 1), core.max_chunk_bytes, "w")),
        ]

    def test_a_transient_failure_is_not_now_and_a_permanent_one_is_raised(self) -> None:
        """A TransientStoreError outcome means "try again later"; a PermanentStoreError is
        raised out of the pass; an UnreadableObjectError is a fault at its key."""
        key0 = chunk_key(S, "w", 0)
        core = ReaderCore(S, discover_interval=0)
        flaky = TransientStoreError("503", url="x", key=key0)
        assert Script({key0: flaky}, {streams_prefix(S): ["w"]}).run(core.poll(0.0)) == []
        assert core.last_error is flaky
        planted = UnreadableObjectError("a FIFO", url="x", key=key0, reason="foreign")
        [fault] = Script({key0: planted}, {}).run(core.poll(1.0))
        assert isinstance(fault, StreamFault) and (fault.key, fault.reason) == (key0, "foreign")
        with pytest.raises(PermanentStoreError, match="denied"):
            Script({chunk_key(S, "w", 1): PermanentStoreError("denied")}, {}).run(core.poll(2.0))

    def test_idle_streams_back_off_on_the_clock_they_are_given(self) -> None:
        """With due_only, an idle stream is not probed again until its interval has passed,
        on the times the driver sends: the core has no clock of its own."""
        core = ReaderCore(S, discover_interval=60, poll=0.01)
        script = Script({}, {streams_prefix(S): ["w"]})
        script.run(core.poll(0.0, due_only=True))
        wait = core.wait_time(0.0)
        assert wait > 0
        script.requests.clear()
        script.run(core.poll(wait / 2, due_only=True))
        assert script.requests == []
        script.run(core.poll(wait, due_only=True))
        assert script.requests == [
            List(streams_prefix(S)),
            Get(chunk_key(S, "w", 0), core.max_chunk_bytes, "w"),
        ]

    def test_a_claimed_entry_is_not_a_writer_and_not_a_fault(self) -> None:
        """An entry another source claims (``_dagster``) is recorded, neither read nor faulted."""
        core = ReaderCore(S, discover_interval=0, claims=frozenset({"_dagster"}))
        items = Script({}, {streams_prefix(S): ["_dagster"]}).run(core.poll(0.0))
        assert items == [] and core.writers == [] and core.claimed == {"_dagster"}


class TestWakeBeats:
    def test_a_wake_beat_is_heard_whatever_the_clocks_of_the_writers(self) -> None:
        """One writer's clock is 10 minutes ahead, another's an hour behind: the feed lists
        every beat each time (not after the newest seen), so the late clock's wake beat
        still makes its quiet stream due at once, and its new chunk is read on that pass."""
        from pipes_bus._wire.keys import beat_key, beats_prefix

        core = ReaderCore(S, beats=True)
        opened = {
            chunk_key(S, w, 0): chunk(w, 0, 0, [Custom(payload=f"{w} opened")])
            for w in ("ahead", "behind")
        }
        listings: dict[str, Any] = {streams_prefix(S): ["ahead", "behind"], beats_prefix(S): []}
        script = Script(opened, listings)
        script.run(core.poll(0.0))
        for t in range(1, 400):  # quiet for a while: the streams back off
            script.run(core.poll(float(t)))
        now = 1_800_000_000_000
        ahead = beat_key(S, "ahead", now + 600_000).rsplit("/", 1)[1]
        listings[beats_prefix(S)] = [ahead]
        t = 400.0
        while core.heard.get("ahead", 0.0) == 0.0:  # until the feed has listed it
            t += 0.5
            script.run(core.poll(t), t)
        script.objects[chunk_key(S, "behind", 1)] = chunk("behind", 1, 1, [Custom(payload=2)])
        behind = beat_key(S, "behind", now - 3_600_000, wake=True).rsplit("/", 1)[1]
        listings[beats_prefix(S)] = sorted([ahead, behind])
        t += core.feed_every()
        script.requests.clear()
        items = script.run(core.poll(t), t)
        assert [i.message.payload for i in items] == [2]
        assert core.beat_counts.get("behind") == 1  # listed, an hour behind the other

    def test_a_beats_folder_that_cannot_be_listed_is_one_fault_and_reading_goes_on(
        self,
    ) -> None:
        """A planted object where the beats folder should be: one fault naming it, and the
        streams are read on that pass and the next ones all the same."""
        from pipes_bus._wire.keys import beats_prefix

        core = ReaderCore(S, beats=True, discover_interval=0)
        planted = UnreadableObjectError("a FIFO", url="x", key=beats_prefix(S), reason="foreign")
        key0, key1 = chunk_key(S, "w", 0), chunk_key(S, "w", 1)
        script = Script(
            {key0: chunk("w", 0, 0, [Custom(payload=1)])},
            {streams_prefix(S): ["w"], beats_prefix(S): planted},
        )
        first = script.run(core.poll(0.0))
        faults = [i for i in first if isinstance(i, StreamFault)]
        assert [(f.key, f.reason) for f in faults] == [(beats_prefix(S), "foreign")]
        assert [i.message.payload for i in first if not isinstance(i, StreamFault)] == [1]
        script.objects[key1] = chunk("w", 1, 1, [Custom(payload=2)])
        t = core.feed_every() + 1.0
        later = script.run(core.poll(t), t)
        assert [i.message.payload for i in later] == [2]  # the fault is not repeated
