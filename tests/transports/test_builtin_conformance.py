"""The built-in transports pass the shipped conformance suite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipes_bus.testing.conformance import TransportConformance
from pipes_bus.transports import Transport
from pipes_bus.transports._file import FileTransport
from pipes_bus.transports._fsspec import FsspecTransport
from pipes_bus.transports._memory import MemoryTransport


class TestMemoryTransport(TransportConformance):
    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        yield MemoryTransport(f"memory://conformance-{uuid.uuid4().hex}")


class TestFileTransport(TransportConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        yield FileTransport(str(tmp_path / "bus"))


class TestFileUrlTransport(TransportConformance):
    @pytest.fixture
    def transport(self, tmp_path: Path) -> Iterator[Transport]:
        yield FileTransport(f"file://{tmp_path}/bus", fsync=False)


class TestFsspecMemoryTransport(TransportConformance):
    """The generic fsspec transport, over fsspec's own memory filesystem."""

    @pytest.fixture
    def transport(self) -> Iterator[Transport]:
        yield FsspecTransport(f"memory://fsspec-conformance-{uuid.uuid4().hex}")
