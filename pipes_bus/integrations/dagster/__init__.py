"""pipes_bus as the transport of Dagster Pipes.

Orchestrator side (imports ``dagster``; loaded on first use of these names):

- :class:`PipesBusMessageReader`: a Dagster ``PipesMessageReader`` that follows a pipes_bus
  session on any store. Every worker process that opens pipes becomes its own writer stream;
  the whole session reaches Dagster as one external process (one ``opened``, one ``closed``).
  Nothing is dropped, a failed writer fails the step, and it also hears workers that keep
  Dagster's default file writer.
- :class:`PipesBusContextInjector`: the context inline when small, else as an object on the
  bus (read back with :class:`PipesBusContextLoader`).

Worker side (imports only ``dagster_pipes`` and ``pipes_bus``, never ``dagster``)::

    from dagster_pipes import open_dagster_pipes
    from pipes_bus.integrations.dagster import PipesBusContextLoader, PipesBusMessageWriter

    with open_dagster_pipes(
        message_writer=PipesBusMessageWriter(), context_loader=PipesBusContextLoader()
    ) as pipes:
        pipes.report_asset_materialization(metadata={"rows": 10})
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipes_bus.integrations.dagster._orchestrator import (
        PipesBusContextInjector,
        PipesBusMessageReader,
    )
    from pipes_bus.integrations.dagster._worker import (
        CONTEXT_PARAMS_KEY,
        PARAMS_KEY,
        PipesBusContextLoader,
        PipesBusMessageWriter,
        PipesBusMessageWriterChannel,
    )

__all__ = [
    "CONTEXT_PARAMS_KEY",
    "PARAMS_KEY",
    "PipesBusContextInjector",
    "PipesBusContextLoader",
    "PipesBusMessageReader",
    "PipesBusMessageWriter",
    "PipesBusMessageWriterChannel",
]

# Each side loads its own dependency only when one of its names is used: the worker side
# needs dagster_pipes, the orchestrator side dagster (about a second to import). The
# Dagster Pipes *source* (pipes_bus.integrations.dagster._source) needs neither.
_WORKER = frozenset(
    {
        "CONTEXT_PARAMS_KEY",
        "PARAMS_KEY",
        "PipesBusContextLoader",
        "PipesBusMessageWriter",
        "PipesBusMessageWriterChannel",
    }
)


def __getattr__(name: str) -> Any:
    if name in _WORKER:
        from pipes_bus.integrations.dagster import _worker

        return getattr(_worker, name)
    if name in ("PipesBusContextInjector", "PipesBusMessageReader"):
        from pipes_bus.integrations.dagster import _orchestrator

        return getattr(_orchestrator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
