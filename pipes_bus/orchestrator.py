"""The orchestrator's face: open sessions, launch work, follow its events, read its result.

Workers never import this module (``import pipes_bus`` does not load it).
"""

from __future__ import annotations

from pipes_bus._log.items import Event, SessionCursor, StreamCursor, StreamFault, WriterSummary
from pipes_bus._orchestrator.aio import AsyncSession
from pipes_bus._orchestrator.injectors import (
    ArgvContextInjector,
    AutoContextInjector,
    ContextInjector,
    EnvContextInjector,
    Injection,
    ObjectContextInjector,
)
from pipes_bus._orchestrator.launch import launch, run_subprocess
from pipes_bus._orchestrator.lifecycle import (
    SessionInfo,
    cancel_session,
    delete_session,
    list_sessions,
    session_info,
)
from pipes_bus._orchestrator.result import SessionResult, WriterState
from pipes_bus._orchestrator.session import Session, default_bus_url, open_session
from pipes_bus._orchestrator.sources import MessageSource, SourceSession, register_source

__all__ = [
    "ArgvContextInjector",
    "AsyncSession",
    "AutoContextInjector",
    "ContextInjector",
    "EnvContextInjector",
    "Event",
    "Injection",
    "MessageSource",
    "ObjectContextInjector",
    "Session",
    "SessionCursor",
    "SessionInfo",
    "SessionResult",
    "SourceSession",
    "StreamCursor",
    "StreamFault",
    "WriterState",
    "WriterSummary",
    "cancel_session",
    "default_bus_url",
    "delete_session",
    "launch",
    "list_sessions",
    "open_session",
    "register_source",
    "run_subprocess",
    "session_info",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
