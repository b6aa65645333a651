"""Message sources: found through the registry, dormant until their workers write."""

from __future__ import annotations

import json
from typing import Any

from pipes_bus.integrations.dagster._source import DagsterPipesSource
from pipes_bus.log import ChunkWriter
from pipes_bus.messages import Opened, WriterInfo
from pipes_bus.orchestrator import Session
from pipes_bus.transports import Transport
from pipes_bus.transports._memory import MemoryTransport


class BlobLike(Transport):
    """A memory store that presents itself as an S3 bucket and records every key asked for."""

    def __init__(self, name: str) -> None:
        super().__init__(f"s3://{name}/bus")
        self.inner = MemoryTransport(f"memory://{name}")
        self.capabilities = self.inner.capabilities  # type: ignore[misc]
        self.keys: list[str] = []

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.keys.append(key)
        return self.inner.put_if_absent(key, data)

    def get(self, key: str, *, max_size: int | None = None) -> bytes | None:
        self.keys.append(key)
        return self.inner.get(key, max_size=max_size)

    def list(self, prefix: str, *, after: str | None = None) -> list[str]:
        self.keys.append(prefix)
        return self.inner.list(prefix, after=after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def dagster_line(method: str, params: dict[str, Any] | None = None) -> bytes:
    return json.dumps(
        {"__dagster_pipes_version": "0.1", "method": method, "params": params}
    ).encode()


class TestDefaultSources:
    def test_every_session_gets_the_dagster_pipes_source_from_the_registry(self) -> None:
        """No flag: the installed `pipes_bus.sources` entry point gives each session one."""
        session = Session(transport=BlobLike("reg")).open()
        assert [type(s) for s in session.sources] == [DagsterPipesSource]
        assert "DAGSTER_PIPES_MESSAGES" in session.env

    def test_an_empty_list_means_no_sources(self) -> None:
        """sources=[] opens a session with none, and no Dagster variables."""
        session = Session(transport=BlobLike("none"), sources=[]).open()
        assert session.sources == [] and "DAGSTER_PIPES_MESSAGES" not in session.env


class TestDormancy:
    def test_a_session_without_dagster_workers_makes_no_request_or_wake_up_for_them(self) -> None:
        """With only a pipes_bus writer, nothing is asked of the Dagster places, and the
        source never shortens the session's waits."""
        transport = BlobLike("quiet")
        session = Session(transport=transport, grace=5.0, settle=0.0).open()
        [source] = session.sources
        with ChunkWriter(transport, session.id, "w") as writer:
            writer.write(Opened(info=WriterInfo(id="w")))
        result = session.wait(done=lambda: True)
        assert result.ok and list(result.writers) == ["w"]
        assert not [k for k in transport.keys if "dagster" in k]
        assert not source.active and source.wait_time() == float("inf")

    def test_a_dagster_worker_wakes_the_source_through_the_sessions_own_listing(self) -> None:
        """Chunks under {session}/streams/_dagster/ show up in the listing the session makes
        anyway: the source wakes and its worker's messages are delivered."""
        transport = BlobLike("loud")
        session = Session(transport=transport, grace=5.0, settle=0.0).open()
        [source] = session.sources
        body = b"\n".join([dagster_line("opened", {}), dagster_line("closed", {})])
        transport.inner.put_if_absent(f"{session.id}/streams/_dagster/messages/1.json", body)
        result = session.wait(done=lambda: True)
        assert result.ok and list(result.writers) == ["dagster-blob"]
        assert result.counts == {"opened": 1, "closed": 1}
        assert source.active
