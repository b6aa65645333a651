"""The transport author's face: the interface, its registry, and error translation.

A transport moves immutable objects to and from one store location. Four operations
(put-if-absent, get, list, delete) and the :class:`Capabilities` that tune readers and
writers to the store are all a plugin provides; :mod:`pipes_bus.testing.conformance` is the
contract it must pass. For a store of buckets, :class:`BucketTransport` does all but the
store's own requests: a subclass makes those in five small methods. A URL's scheme picks the
transport. Lookup order: the built-ins for
plain paths, ``file://`` and ``memory://``; :func:`register_transport` calls; plugins in the
``pipes_bus.transports`` entry-point group; then the generic fsspec transport for any
protocol fsspec knows.

Translate the store library's failures with :func:`store_errors` (or
:func:`translate_store_error`): what is worth retrying becomes
:class:`~pipes_bus.TransientStoreError`, the rest :class:`~pipes_bus.PermanentStoreError`,
each naming the URL and key.
"""

from __future__ import annotations

from pipes_bus._errors import is_transient, store_errors, translate_store_error
from pipes_bus.transports._base import Capabilities, RequestStats, Transport
from pipes_bus.transports._bucket import BucketTransport
from pipes_bus.transports._registry import (
    ENTRY_POINT_GROUP,
    open_transport,
    register_transport,
    transport_class,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BucketTransport",
    "Capabilities",
    "RequestStats",
    "Transport",
    "is_transient",
    "open_transport",
    "register_transport",
    "store_errors",
    "translate_store_error",
    "transport_class",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
