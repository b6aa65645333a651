"""Context injectors: where the orchestrator puts a worker's context.

Each injector has its loader on the worker side (:mod:`pipes_bus._worker.loaders`), named by
the ``via`` it records in the bootstrap. A new placement is a pair: an injector here, and
:func:`pipes_bus.register_context_loader` on the worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from pipes_bus._errors import ConfigurationError
from pipes_bus._wire.bootstrap import ARGV_FLAG, CONTEXT_ENV, Context, encode_context
from pipes_bus._wire.objects import put_object
from pipes_bus.transports import Transport

__all__ = [
    "ArgvContextInjector",
    "AutoContextInjector",
    "ContextInjector",
    "EnvContextInjector",
    "Injection",
    "ObjectContextInjector",
    "injector_for",
]


@dataclass(frozen=True)
class Injection:
    """Where an injector put the context: the loader's ``source``, plus env and args to add."""

    source: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


class ContextInjector:
    """Puts a context where the matching worker-side loader will find it."""

    via: ClassVar[str] = ""

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        """Place ``context`` for ``session`` and say where it is."""
        raise NotImplementedError


class EnvContextInjector(ContextInjector):
    """Inline in ``PIPES_BUS_CONTEXT``, compressed. For contexts up to ``max_bytes``."""

    via = "env"

    def __init__(self, max_bytes: int = 96 * 1024) -> None:
        self.max_bytes = max_bytes

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        text = encode_context(context)
        if len(text) > self.max_bytes:
            raise ConfigurationError(
                f"The context encodes to {len(text)} bytes, over the {self.max_bytes}-byte limit "
                "for an environment variable. Use ObjectContextInjector (or the default, auto)."
            )
        return Injection({"via": "env", "env": CONTEXT_ENV}, env={CONTEXT_ENV: text})


class ObjectContextInjector(ContextInjector):
    """As ``{session}/context.json`` on the bus; only its key travels in the environment."""

    via = "object"

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        ref = put_object(
            transport, f"{session}/context.json", msgspec.json.encode(context), what="context"
        )
        return Injection(
            {"via": "object", "key": ref.key, "max_size": ref.size, "sha256": ref.sha256}
        )


class ArgvContextInjector(ContextInjector):
    """As a ``--pipes-bus-context=...`` argument appended to the command."""

    via = "argv"

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        return Injection(
            {"via": "argv", "flag": ARGV_FLAG}, args=[f"{ARGV_FLAG}={encode_context(context)}"]
        )


class AutoContextInjector(ContextInjector):
    """Inline in the environment when small, else an object in the session (the default)."""

    via = "auto"

    def __init__(self, inline_limit: int = 16 * 1024) -> None:
        self.inline_limit = inline_limit

    def inject(self, context: Context, transport: Transport, session: str) -> Injection:
        if len(encode_context(context)) <= self.inline_limit:
            return EnvContextInjector(self.inline_limit).inject(context, transport, session)
        return ObjectContextInjector().inject(context, transport, session)


_INJECTORS: dict[str, Callable[[], ContextInjector]] = {
    "auto": AutoContextInjector,
    "env": EnvContextInjector,
    "object": ObjectContextInjector,
    "argv": ArgvContextInjector,
}


def injector_for(injector: ContextInjector | str) -> ContextInjector:
    """The injector a name ("auto", "env", "object", "argv") stands for."""
    if not isinstance(injector, str):
        return injector
    try:
        return _INJECTORS[injector]()
    except KeyError:
        raise ConfigurationError(
            f"No context injector {injector!r}; known: {', '.join(sorted(_INJECTORS))}, or a "
            "ContextInjector."
        ) from None
