"""The session core's follow loop, driven by hand: no store, no clock."""

from __future__ import annotations

from typing import Any

from pipes_bus._log.core import ReaderCore
from pipes_bus._orchestrator.core import Hand, Poll, Scan, SessionCore, Wait
from pipes_bus._wire.keys import chunk_key, streams_prefix
from pipes_bus.messages import Closed, Custom, Opened, WriterInfo
from tests.log.test_core import S, Script, chunk


class TestSessionCore:
    """The follow loop, driven by hand: each Poll runs the reader core over a dict."""

    def drive(self, core: SessionCore, objects: dict[str, Any]) -> list[Any]:
        actions: list[Any] = []
        script = Script(objects, {streams_prefix(S): sorted({k.split("/")[2] for k in objects})})
        now = 0.0
        steps = core.follow(lambda: True, grace=30.0, settle=0.25, now=now)
        action = next(steps)
        try:
            while True:
                actions.append(action)
                outcome: Any = None
                if type(action) is Poll:
                    outcome = script.run(
                        core.reader.poll(now, discover=action.discover, due_only=True), now
                    )
                elif type(action) is Scan:
                    outcome = script.run(core.reader.scan(now), now)
                elif type(action) is Wait:
                    now += action.seconds
                action = steps.send((outcome, now))
        except StopIteration:
            return actions

    def test_a_finished_session_ends_after_one_settle_and_a_last_look(self) -> None:
        """Work done and every writer closed: hand the batch, wait `settle` once, look for
        late writers once more, end."""
        core = SessionCore(S, "bus", ReaderCore(S))
        objects = {chunk_key(S, "w", 0): chunk("w", 0, 0, [opened("w"), closed("w", 1)], True)}
        actions = self.drive(core, objects)
        kinds = [type(a).__name__ for a in actions]
        assert kinds == ["Poll", "Poll", "Hand", "Wait", "Poll", "Poll"]
        assert actions[3] == Wait(0.25) and actions[5] == Poll(discover=True)
        assert core.result.ok
        assert core.result.counts == {"opened": 1, "closed": 1}

    def test_a_writer_that_never_closes_is_waited_for_grace_then_named(self) -> None:
        """An open writer gets `grace` seconds from the last progress, then a scan, then the end."""
        core = SessionCore(S, "bus", ReaderCore(S), pid_alive=lambda pid: True)
        objects = {chunk_key(S, "w", 0): chunk("w", 0, 0, [opened("w")])}
        actions = self.drive(core, objects)
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
        actions = self.drive(core, {chunk_key(S, "w", 0): chunk("w", 0, 0, messages, True)})
        [hand] = [a for a in actions if type(a) is Hand]
        assert hand.batch == seen
        assert [e.message.payload for e in core.result.custom_messages] == [7]


def opened(writer: str) -> Opened:
    return Opened(info=WriterInfo(id=writer))


def closed(writer: str, count: int) -> Closed:
    return Closed(count=count)
