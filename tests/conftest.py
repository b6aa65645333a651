"""Shared fixtures: a fresh in-memory bus, a clock tests move by hand, and deadline polling."""

from __future__ import annotations

import uuid

import pytest

from pipes_bus.transports._memory import MemoryTransport
from tests.helpers import FakeClock, WaitUntil
from tests.helpers import wait_until as _wait_until

# Real store servers (moto, fake-gcs-server, Azurite), started the first time a test asks.
pytest_plugins = ["tests.stores"]


@pytest.fixture
def bus() -> MemoryTransport:
    """A memory transport rooted at a fresh, empty location."""
    return MemoryTransport(f"memory://test-{uuid.uuid4().hex}")


@pytest.fixture
def clock() -> FakeClock:
    """A clock that only moves when the test advances it (or code sleeps on it)."""
    return FakeClock()


@pytest.fixture
def wait_until() -> WaitUntil:
    """Poll a condition with a deadline (never a fixed sleep); fail if it never holds."""
    return _wait_until
