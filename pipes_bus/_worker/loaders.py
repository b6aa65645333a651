"""Worker-side context loaders: one per way an injector places the context.

Each orchestrator-side injector (:mod:`pipes_bus._orchestrator.injectors`) has its loader
here, named by the ``via`` the injector records in the bootstrap.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from pipes_bus._errors import ConfigurationError
from pipes_bus._wire.bootstrap import ARGV_FLAG, CONTEXT_ENV, Context, SessionParams, decode_context
from pipes_bus._wire.limits import MiB
from pipes_bus._wire.objects import ObjectRef, get_object

__all__ = ["load_context", "register_context_loader"]

Loader = Callable[[Mapping[str, Any], Mapping[str, str], Sequence[str], Any], Context]


def _from_env(
    source: Mapping[str, Any], env: Mapping[str, str], argv: Sequence[str], _: Any
) -> Context:
    name = source.get("env", CONTEXT_ENV)
    text = env.get(name)
    if text is None:
        raise ConfigurationError(f"The session put the context in {name}, but it is not set.")
    return decode_context(text, name)


def _from_argv(
    source: Mapping[str, Any], env: Mapping[str, str], argv: Sequence[str], _: Any
) -> Context:
    flag = source.get("flag", ARGV_FLAG)
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            return decode_context(arg[len(flag) + 1 :], flag)
        if arg == flag and i + 1 < len(argv):
            return decode_context(argv[i + 1], flag)
    raise ConfigurationError(
        f"The session put the context in the {flag} argument, but it is missing."
    )


def _from_object(
    source: Mapping[str, Any], env: Mapping[str, str], argv: Sequence[str], transport: Any
) -> Context:
    ref = ObjectRef(source["key"], source.get("max_size", 64 * MiB), source.get("sha256", ""))
    data = get_object(transport, ref, what="context object")
    try:
        return msgspec.json.decode(data, type=Context)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ConfigurationError(
            f"The context object {transport.describe(ref.key)} is invalid: {exc}"
        ) from exc


_LOADERS: dict[str, Loader] = {"env": _from_env, "argv": _from_argv, "object": _from_object}


def register_context_loader(via: str, loader: Loader) -> None:
    """Teach workers a new way to find their context (pair it with an injector)."""
    _LOADERS[via] = loader


def load_context(
    params: SessionParams,
    transport: Any,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> Context:
    """The context the session's injector left for this worker."""
    source = params.context
    if not source:
        return Context()
    via = source.get("via", "")
    loader = _LOADERS.get(via)
    if loader is None:
        raise ConfigurationError(
            f"The session injected its context via {via!r}, which this worker cannot load. "
            f"Known: {', '.join(sorted(_LOADERS))}."
        )
    return loader(
        source, os.environ if env is None else env, sys.argv if argv is None else argv, transport
    )
