"""pipes_bus: run work anywhere and hear back from it through shared storage.

This is the worker's face: ``import pipes_bus`` then ``pipes_bus.open_worker()``. Importing
it loads nothing but the error tree; the worker's machinery (msgspec, the writer, the
transport) loads when a name below is first used, and it never loads a reader, an
orchestrator, CLI extras, asyncio or a cloud SDK. Every error pipes_bus raises is here,
whichever face raised it. The other faces:

- :mod:`pipes_bus.messages`: the wire schema (message kinds, typed metadata values);
- :mod:`pipes_bus.orchestrator`: sessions, their events and results, launching work;
- :mod:`pipes_bus.log`: the chunked log itself, for custom runtimes;
- :mod:`pipes_bus.transports`: the transport interface, for store plugin authors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipes_bus._errors import (
    BufferFullError,
    CommandFailed,
    ConfigurationError,
    DeliveryError,
    EncodeError,
    LaunchError,
    MessageTooLargeError,
    NotInSessionError,
    ObjectTooLargeError,
    PermanentStoreError,
    PipesBusError,
    PipesBusWarning,
    StoreError,
    TransientStoreError,
    UnknownSchemeError,
    UnreadableObjectError,
    WriterClosedError,
)
from pipes_bus._version import __version__

if TYPE_CHECKING:
    from pipes_bus._wire.bootstrap import Context, PartitionKeyRange, PartitionTimeWindow
    from pipes_bus._worker.api import Worker, open_worker
    from pipes_bus._worker.lifecycle import Cancelled, WorkerTerminated
    from pipes_bus._worker.loaders import register_context_loader

__all__ = [
    "BufferFullError",
    "Cancelled",
    "CommandFailed",
    "ConfigurationError",
    "Context",
    "DeliveryError",
    "EncodeError",
    "LaunchError",
    "MessageTooLargeError",
    "NotInSessionError",
    "ObjectTooLargeError",
    "PartitionKeyRange",
    "PartitionTimeWindow",
    "PermanentStoreError",
    "PipesBusError",
    "PipesBusWarning",
    "StoreError",
    "TransientStoreError",
    "UnknownSchemeError",
    "UnreadableObjectError",
    "Worker",
    "WorkerTerminated",
    "WriterClosedError",
    "__version__",
    "open_worker",
    "register_context_loader",
]

# Where each name that loads on first use lives.
_LAZY = {
    "Context": "pipes_bus._wire.bootstrap",
    "PartitionKeyRange": "pipes_bus._wire.bootstrap",
    "PartitionTimeWindow": "pipes_bus._wire.bootstrap",
    "Worker": "pipes_bus._worker.api",
    "open_worker": "pipes_bus._worker.api",
    "WorkerTerminated": "pipes_bus._worker.lifecycle",
    "Cancelled": "pipes_bus._worker.lifecycle",
    "register_context_loader": "pipes_bus._worker.loaders",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pipes_bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    value.__module__ = __name__
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in __all__:
    _value = globals().get(_name)
    if isinstance(_value, type):
        _value.__module__ = __name__
del _name, _value
