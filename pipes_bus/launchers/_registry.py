"""Launcher name -> Launcher class: the built-ins, then the ``pipes_bus.launchers`` entry
points, with an install hint when a launcher's client library is missing."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from pipes_bus._errors import ConfigurationError
from pipes_bus.launchers._base import Launcher

__all__ = [
    "ENTRY_POINT_GROUP",
    "launcher_class",
    "launcher_names",
    "make_launcher",
    "register_launcher",
]

ENTRY_POINT_GROUP = "pipes_bus.launchers"

_BUILTIN: dict[str, str] = {
    "subprocess": "pipes_bus.launchers._subprocess:SubprocessLauncher",
    "docker": "pipes_bus.launchers._docker:DockerLauncher",
    "slurm": "pipes_bus.launchers._slurm:SlurmLauncher",
    "ray": "pipes_bus.launchers._ray:RayLauncher",
    "dask": "pipes_bus.launchers._dask:DaskLauncher",
}
# What to install when a built-in launcher's client library is missing.
HINTS: dict[str, str] = {
    "docker": 'pip install "pipes-bus[docker]" (the docker SDK; Podman works through it too)',
    "ray": 'pip install "pipes-bus[ray]" (Ray\'s job submission client)',
    "dask": 'pip install "pipes-bus[dask]" (dask.distributed)',
}
_registered: dict[str, type[Launcher] | str] = {}


def register_launcher(name: str, launcher: type[Launcher] | str) -> None:
    """Serve ``name`` with ``launcher`` (a class or a lazy "module:Class" string)."""
    _registered[name.lower()] = launcher


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def launcher_names() -> list[str]:
    """Every launcher name known here: built-in, registered, or installed as a plugin."""
    return sorted({*_BUILTIN, *_registered, *_entry_points()})


def _load(name: str, target: type[Launcher] | str) -> type[Launcher]:
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            hint = f" Install it: {HINTS[name]}." if name in HINTS else ""
            raise ConfigurationError(
                f"The {name} launcher cannot be loaded ({exc}).{hint}"
            ) from exc
    if not (isinstance(target, type) and issubclass(target, Launcher)):
        raise ConfigurationError(f"{target!r} is not a pipes_bus Launcher subclass.")
    return target


def launcher_class(name: str) -> type[Launcher]:
    """The class that serves launcher ``name``."""
    key = name.lower()
    if key in _registered:
        return _load(key, _registered[key])
    plugins = _entry_points()
    if key in plugins:
        return _load(key, plugins[key].load())
    if key in _BUILTIN:
        return _load(key, _BUILTIN[key])
    raise ConfigurationError(
        f"No launcher named {name!r}. Known here: {', '.join(launcher_names())}; others come "
        f"as plugins in the {ENTRY_POINT_GROUP!r} entry-point group."
    )


def make_launcher(name: str, **options: Any) -> Launcher:
    """Launcher ``name`` built with ``options``; unknown or bad options are a
    ConfigurationError that lists the accepted ones."""
    cls = launcher_class(name)
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigurationError(
            f"The {name} launcher has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(accepted) or 'none'}."
        )
    return cls(**options)
