"""Shared fixtures: a fresh in-memory bus, a clock tests move by hand, and deadline polling."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from pipes_bus.transports._memory import MemoryTransport


class FakeClock:
    """A monotonic clock that moves only when told to. Thread-safe."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.calls = 0

    def __call__(self) -> float:
        with self._lock:
            self.calls += 1
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


WaitUntil = Callable[[Callable[[], bool]], None]


def _wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        pause.wait(0.001)


@pytest.fixture
def bus() -> MemoryTransport:
    """A memory transport rooted at a fresh, empty location."""
    return MemoryTransport(f"memory://test-{uuid.uuid4().hex}")


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it."""
    return FakeClock()


@pytest.fixture
def wait_until() -> WaitUntil:
    """Poll a condition with a deadline (never a fixed sleep); fail if it never holds."""
    return _wait_until
