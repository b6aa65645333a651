"""The launcher interface: a Launcher starts work on a platform and returns a Job.

A :class:`Launcher` is built from its options (keyword arguments: ``image=...``,
``partition=...``) and does two things: :meth:`~Launcher.launch` the work described by a
:class:`LaunchSpec`, and :meth:`~Launcher.attach` to work launched earlier, from its
:class:`LaunchHandle` (what a follower that takes over reads from the session). A
:class:`Job` answers four questions and no more: its :meth:`~Job.status`, its new
:meth:`~Job.output`, :meth:`~Job.stop` it (politely, then by force), and :meth:`~Job.close`
the client. Everything else (the session, the cancel request, escalation, forwarding the
output into the session, mapping the outcome to an exit status) is done once, for every
launcher, by :func:`pipes_bus.orchestrator.launch`.

A Kubernetes launcher fits the same shape: the spec's ``env`` becomes the pod's env, the
handle holds the namespace and Job name, ``status`` reads the Job's conditions and the
container's exit code, ``output`` streams the pod's log, ``stop`` deletes the Job (its
grace period, then with zero grace).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec

from pipes_bus._errors import LaunchError

__all__ = ["Job", "JobState", "JobStatus", "LaunchHandle", "LaunchSpec", "Launcher", "OutputLine"]

JobState = Literal["pending", "running", "succeeded", "failed", "cancelled", "unknown"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "unknown"})

# One line of the platform's own output: (stream, text), stream "stdout" or "stderr".
OutputLine = tuple[str, str]


class LaunchHandle(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Where launched work can be found again: the launcher's name, the platform's id for
    the job (a container id, a Slurm job id, a Ray submission id), where the platform is
    (a socket, an address), and what else the launcher needs to attach (strings only).
    It is recorded in ``{session}/launch.json``; keep secrets out of it."""

    launcher: str
    job_id: str
    where: str = ""
    extra: dict[str, str] = {}
    launched: float = 0.0


@dataclass(frozen=True)
class JobStatus:
    """What the platform says of a job: its state, its exit status once finished (the
    command's code, or 128+S if a signal ended it), and why, in a few words."""

    state: JobState
    exit_code: int | None = None
    reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class LaunchSpec:
    """The work to launch.

    ``command`` already carries the session's arguments; ``env`` holds only the session's
    variables plus what the user added (a launcher that runs on this host adds its own
    environment under them; one that runs elsewhere passes exactly these). ``bus_dir`` is
    the bus's local directory when the bus is one (so that a container can mount it).
    ``session`` is the session id: a platform job name or submission id can carry it.
    ``grace`` is how long the work may take to finish once asked to stop politely.
    """

    command: Sequence[str]
    env: Mapping[str, str]
    session: str
    bus: str
    bus_dir: str | None = None
    cwd: str | None = None
    grace: float = 10.0
    python: str = field(default=sys.executable)


class Job(ABC):
    """Work running on a platform. Every method returns promptly; none raises for the
    platform's failures once launched (they are states)."""

    handle: LaunchHandle
    #: whether :meth:`output` carries the work's output (False: it reaches this
    #: process's terminal directly, as a local command's does)
    forwards_output: ClassVar[bool] = True

    @abstractmethod
    def status(self) -> JobStatus:
        """The job's state now (a cheap query: it is called about once a second)."""

    def output(self) -> list[OutputLine]:
        """Lines the job printed since the last call, oldest first; [] if none."""
        return []

    @abstractmethod
    def stop(self, *, force: bool = False) -> None:
        """Ask the platform to stop the job: politely (``docker stop``, ``scancel``,
        ``stop_job``), or at once with ``force``. Returns without waiting."""

    def close(self) -> None:  # noqa: B027 - optional: most jobs hold nothing
        """Release the platform client (the job itself is not touched)."""


class Launcher(ABC):
    """Starts work on one platform. Subclasses take their options as keyword arguments
    (validated in ``__init__``, a :class:`~pipes_bus.ConfigurationError` naming the option
    otherwise) and set ``name``, the registry key.

    A launcher built with no options must be able to :meth:`attach`: that is how a
    follower that takes over, or ``pipes-bus cancel``, reaches work launched elsewhere, so
    the handle carries what attaching needs (options needed only to launch, such as an
    image, are checked by :meth:`launch`)."""

    name: ClassVar[str]

    @abstractmethod
    def launch(self, spec: LaunchSpec) -> Job:
        """Start the work; a :class:`~pipes_bus.LaunchError` if the platform refuses it."""

    def attach(self, handle: LaunchHandle) -> Job:
        """The job ``handle`` names, launched earlier (perhaps by another process)."""
        raise LaunchError(f"The {self.name} launcher cannot attach to work launched earlier.")

    def describe(self) -> str:
        """Where it launches, for the user: ``docker at unix:///run/docker.sock``."""
        return self.name


def as_strings(value: Any, option: str) -> list[str]:
    """An option that is a list of strings (one string is a list of one)."""
    from pipes_bus._errors import ConfigurationError

    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigurationError(f"The {option!r} option must be a string or a list of strings.")


def as_env(value: Any, option: str = "env") -> dict[str, str]:
    """An option that is a mapping of environment variables (string values)."""
    from pipes_bus._errors import ConfigurationError

    if value is None:
        return {}
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    raise ConfigurationError(
        f'The {option!r} option must map names to strings, e.g. {{"LEVEL": "debug"}}.'
    )


def as_resources(value: Any, option: str, example: str) -> dict[str, float]:
    """An option that maps resource names to numbers (``example``: one, for the message)."""
    from pipes_bus._errors import ConfigurationError

    if value is None:
        return {}
    if isinstance(value, Mapping) and all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        return dict(value)
    raise ConfigurationError(
        f"The {option!r} option must map resource names to numbers, e.g. {example}."
    )
