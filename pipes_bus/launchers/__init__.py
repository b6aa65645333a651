"""The launcher author's face: the interface, the registry, and the built-in launchers.

A launcher starts work on a platform (``subprocess`` here, ``docker``, ``slurm``, ``ray``,
``dask``) and gives back a :class:`Job` that reports its state, forwards its output and
stops it. Users pick one by name (``pipes-bus run --launcher docker``, or
:func:`pipes_bus.orchestrator.launch`); the session around it, the cancel request, the
escalation of a stop, the output's forwarding into the session and the exit status are
the same for every launcher. A third-party launcher is a :class:`Launcher` subclass
registered in the ``pipes_bus.launchers`` entry-point group (or with
:func:`register_launcher`).
"""

from __future__ import annotations

from pipes_bus.launchers._base import (
    Job,
    JobState,
    JobStatus,
    Launcher,
    LaunchHandle,
    LaunchSpec,
)
from pipes_bus.launchers._registry import (
    launcher_class,
    launcher_names,
    make_launcher,
    register_launcher,
)

__all__ = [
    "Job",
    "JobState",
    "JobStatus",
    "LaunchHandle",
    "LaunchSpec",
    "Launcher",
    "launcher_class",
    "launcher_names",
    "make_launcher",
    "register_launcher",
]

from pipes_bus._faces import publish

publish(__name__, globals(), __all__)
del publish
