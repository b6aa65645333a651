"""pipes_bus transport for Amazon S3 and S3-compatible stores: ``s3://`` and ``s3a://`` buses.

Installing this distribution registers :class:`S3Transport` in the ``pipes_bus.transports``
entry-point group, so ``pipes_bus.transports.open_transport("s3://bucket/prefix")`` uses it.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._errors import classify
from ._transport import S3Transport

try:
    __version__ = version("pipes-bus-s3")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["S3Transport", "__version__", "classify"]
