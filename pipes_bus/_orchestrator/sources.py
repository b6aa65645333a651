"""Message sources: other places a session hears from, beside its own writers' streams.

A source turns whatever its workers write (Dagster Pipes' messages, say) into events and
faults with writer ids of its own, and may add variables to the launch environment. It is
found by name: :func:`register_source` in this process, or the ``pipes_bus.sources``
entry-point group (pipes_bus itself registers the Dagster Pipes source there), and made for
each session by its factory from a :class:`SourceSession`.

A source stays *dormant* until there is something to read: it makes no store request and no
wake-up of its own. On a remote store it wakes when the entry it :attr:`claims` appears in
the session's ``streams/`` folder, which the session lists anyway to find its writers; a
source that can tell for itself (a local file) wakes when :attr:`active` says so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pipes_bus._errors import ConfigurationError
from pipes_bus._log.items import Item, SessionCursor
from pipes_bus._wire.bootstrap import Context

if TYPE_CHECKING:
    from pipes_bus.transports import Transport

__all__ = [
    "ENTRY_POINT_GROUP",
    "MessageSource",
    "SourceFactory",
    "SourceSession",
    "make_sources",
    "register_source",
]

ENTRY_POINT_GROUP = "pipes_bus.sources"


@dataclass(frozen=True)
class SourceSession:
    """What a source factory is told about the session it makes a source for.

    ``launching`` is False when following a session that is already running (a takeover):
    then nothing is launched and a source must not expect to hand out variables. ``signed``
    sessions accept only authenticated data: a source whose workers cannot sign must report
    what it finds as faults, never deliver it.
    """

    transport: Transport
    session: str
    context: Context
    signed: bool
    capture_output: bool
    launching: bool
    cursor: SessionCursor | None
    clock: Callable[[], float]


class MessageSource:
    """Another place a session hears from (subclass it; see the module's docstring)."""

    #: The entry of the session's ``streams/`` folder that wakes this source, if any.
    claims: ClassVar[str | None] = None

    def env(self) -> dict[str, str]:
        """Variables to add to the launched work's environment."""
        return {}

    @property
    def active(self) -> bool:
        """Whether there may be something to read (a dormant source is not polled)."""
        return True

    def wake(self) -> None:
        """Called when the entry this source claims appears in the session's listing."""

    def poll(self, *, final: bool = False) -> list[Item]:
        """Everything available now. ``final`` is set on the passes after the work exited."""
        raise NotImplementedError

    def wait_time(self) -> float:
        """Seconds until this source wants to be polled again."""
        return 1.0

    @property
    def writers(self) -> list[str]:
        """Every writer this source has seen."""
        return []

    @property
    def open_writers(self) -> list[str]:
        """Writers this source has seen open but not close."""
        return []

    def close(self) -> None:
        """Release resources."""


SourceFactory = Callable[[SourceSession], "MessageSource | None"]

_registered: dict[str, SourceFactory | str] = {}
_found: dict[str, SourceFactory | str] | None = None


def register_source(name: str, factory: SourceFactory | str) -> None:
    """Make ``factory`` (or a lazy "module:attr" string) a source of every new session."""
    _registered[name] = factory


def _installed() -> dict[str, SourceFactory | str]:
    global _found
    if _found is None:
        from importlib.metadata import entry_points

        _found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _found


def _load(name: str, target: SourceFactory | str) -> SourceFactory:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        loaded: SourceFactory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"Cannot load the message source {name!r} ({target}): {exc}"
        ) from exc
    return loaded


def make_sources(info: SourceSession, names: Iterable[str] | None = None) -> list[MessageSource]:
    """The sources of every registered and installed factory (or of ``names`` only)."""
    available = {**_installed(), **_registered}
    chosen = available if names is None else {n: available[n] for n in names if n in available}
    sources: list[MessageSource] = []
    for name, target in sorted(chosen.items()):
        source: Any = _load(name, target)(info)
        if source is not None:
            sources.append(source)
    return sources
