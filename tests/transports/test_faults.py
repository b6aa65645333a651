"""Faults on the wire: a real S3 server behind a proxy that throttles, drops and goes dark."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipes_bus.testing.fault_proxy import FaultProxy, ProxyFaults
from pipes_bus.testing.servers import Server


@pytest.fixture
def flaky_s3(
    moto_server: Server, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """moto behind a proxy: 15% 503 SlowDown, 5% dropped connections, 2.5 s outages every 6 s."""
    faults = ProxyFaults(slow_down=0.15, drop=0.05, outage_every=6.0, outage_for=2.5, seed=7)
    with FaultProxy(moto_server.url, faults) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        yield proxy


class TestFaultProxy:
    def test_100000_messages_survive_throttling_drops_and_outages(
        self, flaky_s3: FaultProxy, s3_bucket: str, tmp_path: Path
    ) -> None:
        """Every message arrives exactly once, in order, and the run exits 0 despite the faults."""
        script = tmp_path / "worker.py"
        script.write_text(
            "import time, pipes_bus\n"
            "with pipes_bus.open_worker() as w:\n"
            "    for i in range(100000):\n"
            "        w.report_custom_message(i)\n"
            "        if i % 2000 == 0: time.sleep(0.2)\n"
        )
        events = tmp_path / "events.jsonl"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipes_bus",
                "run",
                "-q",
                "--bus",
                f"s3://{s3_bucket}/faults",
                "--events",
                str(events),
                "--",
                sys.executable,
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        assert [x["seq"] for x in lines] == list(range(100002))
        assert [x["payload"] for x in lines if x["kind"] == "custom"] == list(range(100000))
        injected = flaky_s3.counts
        assert injected["slow_down"] > 0 and injected["drop"] > 0 and injected["outage"] > 0
