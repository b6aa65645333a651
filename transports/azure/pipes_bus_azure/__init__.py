"""pipes_bus transport for Azure Blob Storage: ``az://``, ``abfs://`` and ``abfss://`` buses.

Installing this distribution registers :class:`AzureBlobTransport` in the
``pipes_bus.transports`` entry-point group, so
``pipes_bus.transports.open_transport("az://container/prefix")`` uses it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._errors import classify
from ._transport import AzureBlobTransport

try:
    __version__ = version("pipes-bus-azure")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["AzureBlobTransport", "__version__", "classify"]
