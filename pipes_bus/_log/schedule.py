"""How long to wait: one schedule for every backoff and idle budget, and the retry policy.

Both are small objects with injectable sleep and clock, so polling and retrying are tested
without real waiting. tenacity is imported only once a retry is needed: a worker that never
meets a transient failure never loads it (nor the asyncio machinery it brings).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pipes_bus._errors import TransientStoreError

if TYPE_CHECKING:
    import tenacity

__all__ = ["RetryPolicy", "Schedule"]

T = TypeVar("T")


@dataclass
class Schedule:
    """Adaptive waits: ``minimum`` while there is progress, growing by ``factor`` to ``maximum``.

    :meth:`next` keeps its own current wait; :meth:`step` computes the wait after a given
    one, for callers (a reader's streams) that keep one each. Past ``maximum`` a step goes
    straight to ``ceiling`` when one is given: the share of an idle budget one poller gets.
    """

    minimum: float = 0.005
    maximum: float = 1.0
    factor: float = 1.5
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.minimum

    def step(
        self,
        current: float,
        progressed: bool,
        *,
        maximum: float | None = None,
        ceiling: float | None = None,
    ) -> float:
        """The wait after ``current``, given whether the last look found anything.

        ``maximum`` overrides the schedule's own for this caller; past it, the wait goes
        straight to ``ceiling`` (if given and longer).
        """
        if progressed or current <= 0:
            return self.minimum
        top = self.maximum if maximum is None else maximum
        following = max(self.minimum, current * self.factor)
        if following > top:
            return max(top, ceiling) if ceiling is not None else top
        return following

    def next(self, progressed: bool) -> float:
        """The next wait of this schedule, given whether the last look found anything."""
        self.current = self.step(self.current, progressed)
        return self.current


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in total time.

    ``initial`` is the first backoff scale, ``maximum`` caps one wait, ``deadline`` caps
    the whole retry sequence (seconds). Only :class:`~pipes_bus.TransientStoreError` is
    retried. The default rides out store outages of a minute or more.
    """

    initial: float = 0.05
    maximum: float = 4.0
    deadline: float = 120.0
    attempts: int | None = None

    def retrying(
        self, sleep: Callable[[float], None] = time.sleep, *, made: int = 0
    ) -> tenacity.Retrying:
        """A fresh tenacity ``Retrying`` that follows this policy, ``made`` attempts in."""
        import tenacity

        stop: tenacity.stop.stop_base = tenacity.stop_after_delay(self.deadline)
        if self.attempts is not None:
            stop = stop | tenacity.stop_after_attempt(max(1, self.attempts - made))
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientStoreError),
            wait=tenacity.wait_random_exponential(multiplier=self.initial, max=self.maximum),
            stop=stop,
            sleep=sleep,
            reraise=True,
        )

    def describe(self) -> str:
        """The policy's bounds, for messages."""
        limits = f"deadline {self.deadline:g} s"
        if self.attempts is not None:
            limits += f", at most {self.attempts} attempts"
        return limits
