"""The orchestrator's face: open sessions, launch work, follow its events, read its result.

Workers never import this module (``import pipes_bus`` does not load it).
"""

from __future__ import annotations

from pipes_bus._log.items import Event, SessionCursor, StreamCursor, StreamFault, WriterSummary
from pipes_bus._orchestrator.launch import run_subprocess
from pipes_bus._orchestrator.session import (
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

__all__ = [
    "ArgvContextInjector",
    "AutoContextInjector",
    "ContextInjector",
    "EnvContextInjector",
    "Event",
    "Injection",
    "MessageSource",
    "ObjectContextInjector",
    "Session",
    "SessionCursor",
    "SessionResult",
    "StreamCursor",
    "StreamFault",
    "WriterState",
    "WriterSummary",
    "default_bus_url",
    "open_session",
    "run_subprocess",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
