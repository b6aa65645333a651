"""What makes a module a public face: its names report the face as their module."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["publish"]


def publish(face: str, namespace: dict[str, Any], names: list[str]) -> None:
    """Give each class and function in ``names`` the face's name as ``__module__``, so that
    reprs, tracebacks and ``closed`` messages say ``pipes_bus.orchestrator.Session``, not
    the private module that defines it."""
    for name in names:
        value = namespace.get(name)
        if isinstance(value, type) or callable(value):
            with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
                value.__module__ = face
