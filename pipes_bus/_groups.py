"""Process groups: a launched command runs in one of its own, so that a stop reaches
everything it started and nothing else. Shared by the worker's exec, the local launcher
and the Dask task runner; standard library only (the worker side imports it)."""

from __future__ import annotations

import contextlib
import os

__all__ = ["group_alive", "signal_group"]


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to every process of group ``pgid``; a group that is gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a process of another user joined it
        return True
    return True
