"""Objects an orchestrator places on the bus for workers (a large context), checked on read.

An object is created once (put-if-absent: the same bytes may be placed again, other bytes
may not) and referred to by key, size and SHA-256. The reference travels in the worker's
environment, which only the orchestrator writes: anyone who can write to the bucket still
cannot swap the object. Context injection and the Dagster integration place and read their
objects through these two functions only.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from pipes_bus._errors import ConfigurationError

__all__ = ["ObjectRef", "get_object", "put_object"]


class ObjectRef(NamedTuple):
    """Where a placed object is, and what it must be."""

    key: str
    size: int
    sha256: str


def put_object(transport: Any, key: str, data: bytes, *, what: str = "object") -> ObjectRef:
    """Create ``key`` holding ``data`` (again, if it already holds exactly that)."""
    if not transport.put_if_absent(key, data) and transport.get(key, max_size=len(data)) != data:
        raise ConfigurationError(f"{transport.describe(key)} already holds another {what}.")
    return ObjectRef(key, len(data), hashlib.sha256(data).hexdigest())


def get_object(transport: Any, ref: ObjectRef, *, what: str = "object") -> bytes:
    """The placed object's bytes, refused unless they are the ones referred to."""
    data = transport.get(ref.key, max_size=ref.size)
    where = transport.describe(ref.key)
    if data is None:
        raise ConfigurationError(f"The {what} {where} does not exist.")
    if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ConfigurationError(
            f"The {what} {where} is not the one the orchestrator wrote (its SHA-256 "
            "differs); refusing to use it. Someone else can write to this bus."
        )
    return bytes(data)
