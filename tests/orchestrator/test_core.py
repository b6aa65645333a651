"""The session core's follow loop, driven by hand: no store, no clock."""

from __future__ import annotations

from typing import Any

import msgspec

from pipes_bus._log.core import ReaderCore
from pipes_bus._orchestrator.core import Hand, Poll, Scan, SessionCore, Verify, Wait
from pipes_bus._wire.chunk import build_chunk
from pipes_bus._wire.control import Beat, sign
from pipes_bus._wire.keys import beats_prefix, chunk_key, streams_prefix
from pipes_bus.messages import Closed, Custom, Opened, WriterInfo
from tests.log.test_core import S, Script, chunk


def drive(
    core: SessionCore,
    world: Any,
    *,
    done: Any = lambda: True,
    until: float = float("inf"),
    settle: float = 0.25,
) -> tuple[list[Any], float]:
    """Follow with ``world(now, objects, listings)`` updating a dict store before each
    action is carried out; stop at the end of the follow or at ``until``. Returns the
    actions and the time at the end."""
    objects: dict[str, Any] = {}
    listings: dict[str, Any] = {}
    script = Script(objects, listings)
    actions: list[Any] = []
    now = 0.0
    steps = core.follow(done, grace=30.0, settle=settle, now=now)
    action = next(steps)
    try:
        while now < until:
            actions.append(action)
            world(now, objects, listings)
            listings[streams_prefix(S)] = sorted(
                {k.split("/")[2] for k in objects if "/streams/" in k}
            )
            outcome: Any = None
            if type(action) is Poll:
                outcome = script.run(
                    core.reader.poll(now, discover=action.discover, due_only=True), now
                )
            elif type(action) is Scan:
                outcome = script.run(core.reader.scan(now), now)
            elif type(action) is Verify:
                outcome = script.run(core.reader.verify(now, action.writers), now)
            elif type(action) is Wait:
                now += action.seconds
            action = steps.send((outcome, now))
    except StopIteration:
        pass
    return actions, now


def fixed(objects: dict[str, Any]) -> Any:
    """A world whose store holds ``objects`` from the start."""
    return lambda now, store, listings: store.update(objects)


class TestSessionCore:
    """The follow loop, driven by hand: each Poll runs the reader core over a dict."""

    def test_a_finished_session_ends_after_one_settle_and_a_last_look(self) -> None:
        """Work done and every writer closed: hand the batch, wait `settle` once, look for
        late writers once more, end."""
        core = SessionCore(S, "bus", ReaderCore(S))
        objects = {chunk_key(S, "w", 0): chunk("w", 0, 0, [opened("w"), closed("w", 1)], True)}
        actions, _ = drive(core, fixed(objects))
        kinds = [type(a).__name__ for a in actions]
        assert kinds == ["Poll", "Poll", "Hand", "Wait", "Poll", "Poll"]
        assert actions[3] == Wait(0.25) and actions[5] == Poll(discover=True)
        assert core.result.ok
        assert core.result.counts == {"opened": 1, "closed": 1}

    def test_a_writer_that_never_closes_is_waited_for_grace_then_named(self) -> None:
        """An open writer gets `grace` seconds from the last progress, then a scan, then the end."""
        core = SessionCore(S, "bus", ReaderCore(S), pid_alive=lambda pid: True)
        objects = {chunk_key(S, "w", 0): chunk("w", 0, 0, [opened("w")])}
        actions, _ = drive(core, fixed(objects))
        assert sum(a.seconds for a in actions if type(a) is Wait) == 30.0
        assert type(actions[-1]) is Scan
        assert [w.id for w in core.result.incomplete] == ["w"]
        assert core.result.exit_status() == 4

    def test_batches_are_recorded_before_they_are_handed_out(self) -> None:
        """Every Hand carries a batch already in the result, and the callbacks saw it."""
        core = SessionCore(S, "bus", ReaderCore(S))
        seen: list[Any] = []
        core.callbacks.append(seen.append)
        messages = [opened("w"), Custom(payload=7), closed("w", 2)]
        actions, _ = drive(core, fixed({chunk_key(S, "w", 0): chunk("w", 0, 0, messages, True)}))
        [hand] = [a for a in actions if type(a) is Hand]
        assert hand.batch == seen
        assert [e.message.payload for e in core.result.custom_messages] == [7]


def opened(writer: str) -> Opened:
    return Opened(info=WriterInfo(id=writer))


def closed(writer: str, count: int) -> Closed:
    return Closed(count=count)


class TestLiveness:
    """A quiet writer is told from a dead one by its beats alone (driven by hand)."""

    @staticmethod
    def opened_with(heartbeat: float | None) -> Any:
        def world(now: float, objects: dict[str, Any], listings: dict[str, Any]) -> None:
            objects[chunk_key(S, "w", 0)] = chunk(
                "w", 0, 0, [Opened(info=WriterInfo(id="w", host="elsewhere"), heartbeat=heartbeat)]
            )

        return world

    def test_a_writer_that_beats_is_never_lost_however_long_it_is_quiet(self) -> None:
        """A beat every heartbeat for an hour of fake time: never lost, then it closes."""
        opened_world = self.opened_with(5.0)

        def world(now: float, objects: dict[str, Any], listings: dict[str, Any]) -> None:
            opened_world(now, objects, listings)
            beats = listings.setdefault(beats_prefix(S), [])
            stamp = 1_000_000 + int(now // 5) * 5000
            name = f"{stamp:013d}-h-w"
            if name not in beats:
                beats[:] = [name]  # each beat replaces the last, as writers do
            if now >= 3600:
                objects[chunk_key(S, "w", 1)] = chunk("w", 1, 1, [closed("w", 1)], True)

        core = SessionCore(S, "bus", ReaderCore(S, beats=True), pid_alive=lambda pid: True)
        _, end = drive(core, world, done=None, until=4000, settle=0.0)
        assert 3600 <= end < 3700
        assert core.result.ok and not core.result.lost
        assert core.result.writers["w"].beats == 721  # every beat (one each 5 s), once

    def test_a_writer_gone_silent_is_lost_after_three_heartbeats_and_a_closer_look(
        self,
    ) -> None:
        """No beat, no chunk: after 3 heartbeats plus two feed intervals and 5 s, one Verify
        (probe, deeper look back), then lost: the session ends with 4 and says so."""
        core = SessionCore(S, "bus", ReaderCore(S, beats=True), pid_alive=lambda pid: True)
        actions, end = drive(core, self.opened_with(5.0), done=None, until=600, settle=0.0)
        verifies = [a for a in actions if type(a) is Verify]
        assert [v.writers for v in verifies] == [["w"]]
        allowed = 3 * 5.0 + 2 * core.reader.feed_every() + 5.0
        assert allowed < end < allowed + 2 * core.reader.feed_every() + 1.0
        [lost] = core.result.lost
        assert lost.id == "w" and lost.last_heard is not None
        assert core.result.exit_status() == 4
        assert core.result.reason() == (
            f"writer w was lost: {lost.heard_text()}; its last delivered message was #0 (opened)"
        )

    def test_the_sessions_liveness_sets_the_allowed_silence(self) -> None:
        """liveness=10 declares the writer lost after 10 s, not after its heartbeats."""
        core = SessionCore(
            S, "bus", ReaderCore(S, beats=True), pid_alive=lambda pid: True, liveness=10.0
        )
        assert core.allowed_silence("w") == 10.0
        _, end = drive(core, self.opened_with(60.0), done=None, until=600, settle=0.0)
        assert [w.id for w in core.result.lost] == ["w"]
        assert 60.0 <= end < 70.0  # never less than the writer's own heartbeat

    def test_a_writer_that_announces_no_heartbeat_is_never_lost_by_silence(self) -> None:
        """An older writer (no heartbeat in `opened`) gets no silence limit of its own."""
        core = SessionCore(S, "bus", ReaderCore(S, beats=True), pid_alive=lambda pid: True)
        actions, end = drive(core, self.opened_with(None), done=None, until=2000, settle=0.0)
        assert end >= 2000 and not core.result.lost
        assert not [a for a in actions if type(a) is Verify]

    def test_a_forged_beat_in_a_signed_session_is_a_fault_and_keeps_no_one_alive(self) -> None:
        """Signed: the latest beat is read and checked before the writer is lost; a beat
        with no valid MAC is an unauthenticated fault, and the writer is lost all the same."""
        key = b"k" * 32
        opened_world = self.opened_with(5.0)

        def world(now: float, objects: dict[str, Any], listings: dict[str, Any]) -> None:
            opened_world(now, objects, listings)
            objects[chunk_key(S, "w", 0)] = signed_chunk(key)
            name = f"{1_000_000 + int(now) * 1000:013d}-h-w"
            listings[beats_prefix(S)] = [name]
            objects[f"{beats_prefix(S)}/{name}"] = msgspec.json.encode(
                Beat(writer="w", seq=1, chunk=1, time=now, mac="0" * 64)
            )

        core = SessionCore(S, "bus", ReaderCore(S, key=key, beats=True), pid_alive=lambda pid: True)
        drive(core, world, done=None, until=600, settle=0.0)
        assert [w.id for w in core.result.lost] == ["w"]
        assert {f.reason for f in core.result.faults} == {"unauthenticated"}

    def test_a_signed_beat_keeps_its_writer_alive(self) -> None:
        """Signed and valid, the latest beat counts: the writer is not lost."""
        key = b"k" * 32
        opened_world = self.opened_with(5.0)

        def world(now: float, objects: dict[str, Any], listings: dict[str, Any]) -> None:
            opened_world(now, objects, listings)
            objects[chunk_key(S, "w", 0)] = signed_chunk(key)
            name = f"{1_000_000 + int(now // 5) * 5000:013d}-h-w"
            listings[beats_prefix(S)] = [name]
            objects[f"{beats_prefix(S)}/{name}"] = msgspec.json.encode(
                sign(key, Beat(writer="w", seq=1, chunk=1, time=now))
            )

        core = SessionCore(S, "bus", ReaderCore(S, key=key, beats=True), pid_alive=lambda pid: True)
        actions, end = drive(core, world, done=lambda: False, until=600, settle=0.0)
        assert end >= 600 and not core.result.lost and not core.result.faults
        assert [a for a in actions if type(a) is Verify]  # checked, more than once


def signed_chunk(key: bytes) -> bytes:
    body = msgspec.json.encode(Opened(info=WriterInfo(id="w", host="elsewhere"), heartbeat=5.0))
    return build_chunk(writer="w", chunk=0, first=0, count=1, body=body + b"\n", key=key)
