"""Retry and polling policies: small objects with injectable sleep and clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tenacity

from ._errors import TransientStoreError

__all__ = ["PollSchedule", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded in total time.

    ``initial`` is the first backoff scale, ``maximum`` caps one wait, ``deadline`` caps
    the whole retry sequence (seconds). Only :class:`TransientStoreError` is retried.
    The default rides out store outages of a minute or more.
    """

    initial: float = 0.05
    maximum: float = 4.0
    deadline: float = 120.0
    attempts: int | None = None

    def retrying(self, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
        """A fresh tenacity ``Retrying`` that follows this policy."""
        stop: tenacity.stop.stop_base = tenacity.stop_after_delay(self.deadline)
        if self.attempts is not None:
            stop = stop | tenacity.stop_after_attempt(self.attempts)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientStoreError),
            wait=tenacity.wait_random_exponential(multiplier=self.initial, max=self.maximum),
            stop=stop,
            sleep=sleep,
            reraise=True,
        )


@dataclass
class PollSchedule:
    """Adaptive polling: ``minimum`` while data flows, backing off by ``factor`` to ``maximum``."""

    minimum: float = 0.005
    maximum: float = 1.0
    factor: float = 1.5
    current: float = field(init=False)

    def __post_init__(self) -> None:
        self.current = self.minimum

    def next(self, progressed: bool) -> float:
        """Seconds to wait before the next poll, given whether this one found anything."""
        if progressed:
            self.current = self.minimum
        else:
            self.current = min(self.maximum, self.current * self.factor)
        return self.current
