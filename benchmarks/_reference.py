"""The Dagster Pipes side of the comparisons: the reference, wired as Dagster documents it.

One asset whose body calls ``PipesSubprocessClient.run`` on a worker program
(reference_workload.py), materialized in process with an ephemeral instance:

- ``reader="default"``: ``PipesSubprocessClient()`` with its defaults (a temp-file context
  injector, ``PipesTempFileMessageReader``; the worker's default file writer);
- ``reader="s3"``: ``PipesSubprocessClient(message_reader=PipesS3MessageReader(bucket=...,
  client=boto3.client("s3")))`` with the reader's default interval; the worker uses
  ``PipesS3MessageWriter``. The boto3 clients reach the local moto server through
  ``AWS_ENDPOINT_URL_S3``.

What is measured, without changing the reference's behaviour:

- ``run_s``: the time ``PipesSubprocessClient.run`` takes (launch to the reader giving up
  or finishing); ``total_s`` adds Dagster's own run machinery (``materialize``).
- what the reader delivered: ``get_custom_messages()`` after the run;
- when each custom message reached Dagster: ``PipesMessageHandler.handle_message`` is
  wrapped for the duration of the run to note the time of each call (it then calls the
  original), so a payload carrying its emit time gives emit-to-delivery latency;
- whether Dagster reported the run as a success, and its warnings and errors.
"""

# No `from __future__ import annotations`: Dagster reads the asset's annotations as objects.
import importlib.util
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REFERENCE_WORKLOAD = HERE / "reference_workload.py"
# Dagster is an optional benchmark dependency (pip install -e ".[bench]").
HAVE_DAGSTER = all(importlib.util.find_spec(m) for m in ("dagster", "dagster_pipes", "dagster_aws"))


@dataclass
class ReferenceRun:
    """One run of the reference."""

    run_s: float = 0.0
    total_s: float = 0.0
    success: bool = False
    payloads: list[Any] = field(default_factory=list)  # get_custom_messages(), in order
    received_at: list[tuple[float, Any]] = field(default_factory=list)  # (time.time(), payload)
    methods: dict[str, int] = field(default_factory=dict)  # messages handled, by method
    problems: list[str] = field(default_factory=list)  # Dagster's warnings and errors
    worker: dict[str, Any] = field(default_factory=dict)  # the worker's --report
    error: str | None = None


def _quiet_dagster() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module="dagster")
    for name in ("dagster", "dagster._core", "botocore", "boto3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_reference(
    workload_args: list[str],
    *,
    reader: str,
    tmp: Path,
    bucket: str | None = None,
    writer_interval: float | None = None,
) -> ReferenceRun:
    """Run ``reference_workload.py WORKLOAD_ARGS`` under Dagster Pipes; see the module doc."""
    _quiet_dagster()
    from dagster import (
        AssetExecutionContext,
        DagsterInstance,
        PipesSubprocessClient,
        asset,
        materialize,
    )
    from dagster._core.pipes.context import PipesMessageHandler

    out = ReferenceRun()
    report = tmp / "reference-report.json"
    report.unlink(missing_ok=True)
    writer = ["--writer", "s3"] if reader == "s3" else []
    if writer_interval is not None:
        writer += ["--interval", str(writer_interval)]
    command = [
        sys.executable,
        str(REFERENCE_WORKLOAD),
        *writer,
        "--report",
        str(report),
        *workload_args,
    ]
    if reader == "s3":
        import boto3
        from dagster_aws.pipes import PipesS3MessageReader

        assert bucket is not None
        client = PipesSubprocessClient(
            message_reader=PipesS3MessageReader(bucket=bucket, client=boto3.client("s3"))
        )
    else:
        client = PipesSubprocessClient()

    def pipes_body(context: AssetExecutionContext, pipes: PipesSubprocessClient) -> Any:
        started = time.perf_counter()
        invocation = pipes.run(context=context, command=command)
        out.run_s = time.perf_counter() - started
        out.payloads = list(invocation.get_custom_messages())
        return invocation.get_results()

    reference = asset(name="reference")(pipes_body)

    original = PipesMessageHandler.handle_message
    received = out.received_at

    methods = out.methods

    def timed(self: Any, message: Any) -> None:
        method = message.get("method") if isinstance(message, dict) else None
        methods[str(method)] = methods.get(str(method), 0) + 1
        if method == "report_custom_message":
            received.append((time.time(), (message.get("params") or {}).get("payload")))
        original(self, message)

    PipesMessageHandler.handle_message = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    try:
        with DagsterInstance.ephemeral() as instance:
            result = materialize(
                [reference],
                resources={"pipes": client},
                instance=instance,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            )
            out.success = result.success
            for entry in instance.all_logs(result.run_id):
                if entry.level >= logging.WARNING:
                    text = (
                        entry.user_message
                        or (entry.dagster_event.message if entry.dagster_event else "")
                        or ""
                    )
                    out.problems.append(" ".join(text.split())[:300])
            failures = result.get_step_failure_events()
            if failures:
                error = failures[0].step_failure_data.error
                out.error = error.message.strip()[:300] if error else "step failed"
    finally:
        PipesMessageHandler.handle_message = original  # type: ignore[method-assign]
        out.total_s = time.perf_counter() - started
    if report.exists():
        out.worker = json.loads(report.read_text())
    return out
