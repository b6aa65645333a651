"""FaultyTransport: wraps any transport and injects errors, lost answers, slowness and outages."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipes_bus._errors import PermanentStoreError, TransientStoreError
from pipes_bus.transports import Transport

__all__ = ["FaultPlan", "FaultyTransport"]


@dataclass
class FaultPlan:
    """What to inject, per operation, with a seeded random source.

    ``error``: chance an operation fails with a TransientStoreError before reaching the store.
    ``lost_reply``: chance a put reaches the store but its answer is lost (raises after).
    ``timeout``: chance an operation raises a TimeoutError-flavoured transient error.
    ``delay``: seconds added to every operation (through ``sleep``).
    ``outage``: (start, end) windows, in seconds on ``clock`` since creation, when every
    operation fails transiently.
    ``permanent``: operations ("put", "get", "list", "delete") that always fail for good.
    """

    error: float = 0.0
    lost_reply: float = 0.0
    timeout: float = 0.0
    delay: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()
    permanent: frozenset[str] = frozenset()
    seed: int = 0


class FaultyTransport(Transport):
    """A transport that misbehaves on purpose, for tests. Counts what it injected."""

    def __init__(
        self,
        inner: Transport,
        plan: FaultPlan | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.plan = plan or FaultPlan()
        self.capabilities = inner.capabilities  # type: ignore[misc]
        self.stats = inner.stats
        self._random = random.Random(self.plan.seed)
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self.injected: dict[str, int] = {}

    def _roll(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._lock:
            return self._random.random() < p

    def _count(self, what: str) -> None:
        with self._lock:
            self.injected[what] = self.injected.get(what, 0) + 1

    def _before(self, op: str, key: str) -> None:
        plan = self.plan
        if plan.delay:
            self._sleep(plan.delay)
        if op in plan.permanent:
            self._count("permanent")
            raise PermanentStoreError(
                f"injected permanent failure: {op} {key}", url=self.url, key=key
            )
        elapsed = self._clock() - self._start
        if any(start <= elapsed < end for start, end in plan.outages):
            self._count("outage")
            raise TransientStoreError(f"injected outage: {op} {key}", url=self.url, key=key)
        if self._roll(plan.error):
            self._count("error")
            raise TransientStoreError(f"injected 503 SlowDown: {op} {key}", url=self.url, key=key)
        if self._roll(plan.timeout):
            self._count("timeout")
            raise TransientStoreError(f"injected timeout: {op} {key}", url=self.url, key=key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._before("put", key)
        created = self.inner.put_if_absent(key, data)
        if self._roll(self.plan.lost_reply):
            self._count("lost_reply")
            raise TransientStoreError(f"injected lost reply: put {key}", url=self.url, key=key)
        return created

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        self._before("get", key)
        return self.inner.get(key, max_size=max_size)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self._before("list", prefix)
        return self.inner.list(prefix, after=after)

    def delete(self, key: str) -> None:
        self._before("delete", key)
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
