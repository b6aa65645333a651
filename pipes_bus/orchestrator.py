"""The orchestrator's API: open sessions, inject context, follow events, run subprocesses.

Workers never import this module (``import pipes_bus`` does not load it).
"""

from __future__ import annotations

from ._session import (
    ArgvContextInjector,
    AutoContextInjector,
    ContextInjector,
    EnvContextInjector,
    Injection,
    MessageSource,
    ObjectContextInjector,
    Session,
    SessionResult,
    WriterState,
    default_bus_url,
    open_session,
)
from ._subprocess import run_subprocess

__all__ = [
    "ArgvContextInjector",
    "AutoContextInjector",
    "ContextInjector",
    "EnvContextInjector",
    "Injection",
    "MessageSource",
    "ObjectContextInjector",
    "Session",
    "SessionResult",
    "WriterState",
    "default_bus_url",
    "open_session",
    "run_subprocess",
]
