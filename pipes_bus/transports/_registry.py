"""URL scheme -> transport class, with lazy imports, plugins and install hints."""

from __future__ import annotations

import importlib
import re
import warnings
from typing import Any

from pipes_bus._errors import ConfigurationError, PipesBusWarning, UnknownSchemeError
from pipes_bus.transports._base import Transport

__all__ = ["ENTRY_POINT_GROUP", "open_transport", "register_transport", "transport_class"]

ENTRY_POINT_GROUP = "pipes_bus.transports"

_FILE = "pipes_bus.transports._file:FileTransport"
_BUILTIN: dict[str, str] = {
    "memory": "pipes_bus.transports._memory:MemoryTransport",
    "file": _FILE,
    "local": _FILE,
    "": _FILE,
}
_DIRECTORY = frozenset({"", "file", "local"})
_FSSPEC = "pipes_bus.transports._fsspec:FsspecTransport"
# Schemes that have a dedicated plugin distribution, and its name.
PLUGINS: dict[str, str] = {
    "s3": "pipes-bus-s3",
    "s3a": "pipes-bus-s3",
    "gs": "pipes-bus-gcs",
    "gcs": "pipes-bus-gcs",
    "az": "pipes-bus-azure",
    "abfs": "pipes-bus-azure",
    "abfss": "pipes-bus-azure",
}

_registered: dict[str, type[Transport] | str] = {}
_hinted: set[str] = set()
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_LOOKS_LIKE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/?[^/]")
_BARE_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def scheme_of(url: str) -> str:
    """The URL's scheme in lower case, or '' for a plain path.

    For an fsspec chained URL (``simplecache::s3://b/p``) it is the outermost protocol.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"Bus URL {url!r} is empty; give a path or a URL like s3://b/p.")
    head, chained, _ = url.partition("::")
    match = _SCHEME.match(head)
    if match:
        return match.group(1).lower()
    if chained and _BARE_SCHEME.fullmatch(head):
        return head.lower()
    if "://" in head or _LOOKS_LIKE_URL.match(head):
        raise ConfigurationError(
            f"Bus URL {url!r} is malformed: expected SCHEME://LOCATION (e.g. s3://bucket/prefix) "
            "or a plain directory path."
        )
    return ""


def register_transport(scheme: str, transport: type[Transport] | str) -> None:
    """Serve ``scheme`` with ``transport`` (a class or a lazy "module:Class" string)."""
    _registered[scheme.lower()] = transport


def _load(target: type[Transport] | str) -> type[Transport]:
    if isinstance(target, str):
        module, _, name = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"Cannot load the transport {target!r}: {exc}") from exc
    if not (isinstance(target, type) and issubclass(target, Transport)):
        raise ConfigurationError(f"{target!r} is not a pipes_bus Transport subclass.")
    return target


def entry_points(*, group: str) -> list[Any]:
    """The installed entry points of ``group`` (importlib.metadata loads only when asked:
    a worker on a directory bus never needs it)."""
    from importlib.metadata import entry_points as installed

    return list(installed(group=group))


def _plugin(scheme: str) -> type[Transport] | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == scheme:
            try:
                return _load(ep.load())
            except ImportError as exc:
                raise ConfigurationError(
                    f"The transport plugin for {scheme}:// ({ep.value}) failed to import: {exc}"
                ) from exc
    return None


def transport_class(url: str) -> type[Transport]:
    """The transport class that serves ``url``."""
    scheme = scheme_of(url)
    if scheme in _registered:
        return _load(_registered[scheme])
    if scheme in _DIRECTORY:
        # The embedded default: no plugin scan (a worker on a directory bus stays light).
        return _load(_FILE)
    plugin = _plugin(scheme)
    if plugin is not None:
        return plugin
    if scheme in _BUILTIN:
        return _load(_BUILTIN[scheme])
    # `fsspec.registry` the attribute is a mapping that shadows the module of that name.
    from fsspec.registry import known_implementations, registry  # type: ignore[import-untyped]

    if scheme in known_implementations or scheme in registry:
        if scheme in PLUGINS and scheme not in _hinted:
            _hinted.add(scheme)
            warnings.warn(
                f"Using the generic fsspec transport for {scheme}://; "
                f"pip install {PLUGINS[scheme]} for its store-specific handling.",
                PipesBusWarning,
                stacklevel=3,
            )
        return _load(_FSSPEC)
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    known = sorted({*_BUILTIN, *_registered, *plugins} - {""})
    hint = f" Install {PLUGINS[scheme]}." if scheme in PLUGINS else ""
    raise UnknownSchemeError(
        f"No transport for {scheme}:// (in {url!r}).{hint} Known here: "
        f"{', '.join(known)}, plain paths, and every protocol fsspec knows."
    )


def open_transport(url: str, **storage_options: Any) -> Transport:
    """Build the transport for ``url`` with the given storage options."""
    cls = transport_class(url)
    try:
        return cls(url, **storage_options)
    except ImportError as exc:
        scheme = scheme_of(url)
        hint = PLUGINS.get(scheme)
        what = f"pip install {hint}" if hint else f"install the fsspec backend for {scheme}://"
        raise ConfigurationError(f"Cannot open {url}: {exc}. To use it, {what}.") from exc
