"""pipes_bus transport for Google Cloud Storage: ``gs://`` and ``gcs://`` buses.

Installing this distribution registers :class:`GCSTransport` in the ``pipes_bus.transports``
entry-point group, so ``pipes_bus.transports.open_transport("gs://bucket/prefix")`` uses it.
"""

from __future__ import annotations

import os

# gcsfs >= 2026.3 turns on experimental zonal/HNS bucket support unless this is false,
# and that path hangs on gRPC against emulators. It is read when gcsfs is imported, so
# it is set (unless the user chose) before anything here imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from importlib.metadata import PackageNotFoundError, version

from ._errors import classify
from ._transport import GCSTransport

try:
    __version__ = version("pipes-bus-gcs")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["GCSTransport", "__version__", "classify"]
