"""Transports: the interface, the registry, and the built-in memory, file and fsspec ones.

A URL's scheme picks the transport. Lookup order: :func:`register_transport` calls,
then plugins in the ``pipes_bus.transports`` entry-point group, then the built-ins,
then the generic fsspec transport for any protocol fsspec knows.
"""

from __future__ import annotations

from ._base import Capabilities, RequestStats, Transport
from ._registry import (
    ENTRY_POINT_GROUP,
    open_transport,
    register_transport,
    transport_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "RequestStats",
    "Transport",
    "open_transport",
    "register_transport",
    "transport_class",
]
