"""What a session heard, and the one status and reason it condenses into."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pipes_bus._log.items import Event, StreamFault, WriterSummary
from pipes_bus._status import (
    EXIT_BUS,
    EXIT_CANCELLED,
    EXIT_INCOMPLETE,
    EXIT_UNDELIVERABLE,
    EXIT_USAGE,
    EXIT_WORKER_FAILED,
)
from pipes_bus._wire.control import CancelRequest
from pipes_bus._wire.schema import ExceptionInfo, Progress, UnknownMessage

__all__ = [
    "EXIT_BUS",
    "EXIT_CANCELLED",
    "EXIT_INCOMPLETE",
    "EXIT_UNDELIVERABLE",
    "EXIT_WORKER_FAILED",
    "SessionResult",
    "WriterState",
]

# Exit statuses of a session whose command itself exited 0 (see `pipes-bus run --help`).


@dataclass
class WriterState:
    """What the session knows about one writer."""

    id: str
    label: str | None = None
    pid: int | None = None
    host: str | None = None
    opened: bool = False
    closed: bool = False
    exception: ExceptionInfo | None = None
    messages: int = 0
    last: Event | None = None
    progress: Progress | None = None
    #: The most seconds it said it would stay silent (``opened.heartbeat``).
    heartbeat: float | None = None
    #: When it was last heard from (a message or a beat), in seconds since the epoch.
    last_heard: float | None = None
    #: Beats seen from it.
    beats: int = 0
    #: Declared lost: not heard from for longer than the session's liveness allows.
    lost: bool = False
    #: When it was declared lost, in seconds since the epoch.
    lost_at: float | None = None
    #: The seq and kind of the last delivered message (kept when ``last`` is not, across a
    #: follower's restart).
    last_seq: int | None = None
    last_kind: str | None = None

    @property
    def name(self) -> str:
        """The label if there is one, else the id."""
        return f"{self.label} ({self.id})" if self.label else self.id

    def last_message_text(self) -> str:
        """A short description of the last delivered message."""
        if self.last is not None:
            self.last_seq, self.last_kind = self.last.seq, _kind_of(self.last.message)
        if self.last_seq is None:
            return "nothing was delivered"
        return f"its last delivered message was #{self.last_seq} ({self.last_kind})"

    def heard_text(self) -> str:
        """When it was last heard from, for a reason."""
        if self.last_heard is None:
            return "never heard from after it opened"
        stamp = time.strftime("%H:%M:%S", time.localtime(self.last_heard))
        if self.lost_at is None:
            return f"last heard from at {stamp} ({time.time() - self.last_heard:.0f} s ago)"
        silent = max(0.0, self.lost_at - self.last_heard)
        return f"not heard from since {stamp} ({silent:.0f} s when it was declared lost)"

    def summary(self) -> WriterSummary:
        """This state in the form a cursor keeps."""
        self.last_message_text()
        return WriterSummary(
            **{name: getattr(self, name) for name in WriterSummary.__struct_fields__}
        )

    @classmethod
    def from_summary(cls, writer: str, summary: WriterSummary) -> WriterState:
        """The state a cursor kept of ``writer``."""
        return cls(writer, **msgspec.structs.asdict(summary))


def _kind_of(message: Any) -> str:
    return (
        str(message.kind) if isinstance(message, UnknownMessage) else type(message).__name__.lower()
    )


@dataclass
class SessionResult:
    """Everything a session heard, and whether anything went wrong."""

    session: str
    bus: str
    exit_code: int | None = None
    writers: dict[str, WriterState] = field(default_factory=dict)
    materializations: list[Event] = field(default_factory=list)
    checks: list[Event] = field(default_factory=list)
    custom_messages: list[Event] = field(default_factory=list)
    logs: list[Event] = field(default_factory=list)
    outputs: list[Event] = field(default_factory=list)
    unknown: list[Event] = field(default_factory=list)
    faults: list[StreamFault] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    requests: dict[str, Any] = field(default_factory=dict)
    diagnostics: str = ""
    #: Why the bus could not be read to the end, if it could not.
    bus_error: str | None = None
    #: Why the launched command was asked to stop ("pipes-bus passed on an interrupt"), if it was.
    stopped: str | None = None
    #: The session's cancel request, if it was cancelled: who asked, and why.
    cancelled: CancelRequest | None = None
    #: Where a launcher launched the work (``pipes_bus.launchers.LaunchHandle``), if one did.
    launch: Any = None
    #: What the platform said of the job at the end ("failed (OOMKilled)"), if it was asked.
    job_state: str | None = None
    #: Why the work could not be launched (the platform refused it), if it could not.
    launch_error: str | None = None

    @property
    def incomplete(self) -> list[WriterState]:
        """Writers that opened but never closed."""
        return [w for w in self.writers.values() if not w.closed]

    @property
    def failed(self) -> list[WriterState]:
        """Writers that closed with an exception."""
        return [w for w in self.writers.values() if w.closed and w.exception is not None]

    @property
    def ok(self) -> bool:
        """True only if the command exited 0, every writer closed cleanly, nothing was lost."""
        return self.exit_status() == 0

    @property
    def lost(self) -> list[WriterState]:
        """Writers declared lost: silent for longer than the session's liveness allows."""
        return [w for w in self.writers.values() if w.lost and not w.closed]

    @property
    def state(self) -> str:
        """How it ended, in a word: succeeded, cancelled, lost (a writer was), or failed."""
        if self.cancelled is not None:
            return "cancelled"
        status = self.exit_status()
        if status == 0:
            return "succeeded"
        return "lost" if status == EXIT_INCOMPLETE and self.lost else "failed"

    def problems(self) -> list[str]:
        """One sentence per problem, most important first."""
        lines: list[str] = []
        if self.launch_error is not None:
            lines.append(f"the work could not be launched: {self.launch_error}")
        if self.cancelled is not None:
            lines.append(f"the session was {self.cancelled.describe()}")
        after = f" after {self.stopped}" if self.stopped else ""
        if self.exit_code is not None and self.exit_code < 0:
            lines.append(f"the command was killed by {_signal_name(-self.exit_code)}{after}")
        elif self.exit_code not in (None, 0):
            job = f"; the platform says {self.job_state}" if self.job_state else ""
            lines.append(f"the command exited with status {self.exit_code}{after}{job}")
        if self.bus_error is not None:
            lines.append(f"the bus could not be read to the end: {self.bus_error}")
        for w in self.failed:
            assert w.exception is not None
            lines.append(f"writer {w.name} failed: {w.exception.type}: {w.exception.message}")
        for w in self.incomplete:
            if w.lost:
                lines.append(f"writer {w.name} was lost: {w.heard_text()}; {w.last_message_text()}")
            else:
                lines.append(f"writer {w.name} never closed; {w.last_message_text()}")
        for fault in self.faults:
            lines.append(f"undeliverable data: {fault}")
        return lines

    def reason(self) -> str | None:
        """A one-line reason the session did not succeed, or None."""
        problems = self.problems()
        if not problems:
            return None
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return problems[0] + more

    def exit_status(self) -> int:
        """The documented exit status: 2 if it could not be launched, 7 if cancelled, the
        command's, else 3/4/5/6."""
        if self.launch_error is not None:
            return EXIT_USAGE
        if self.cancelled is not None:
            return EXIT_CANCELLED
        if self.exit_code not in (None, 0):
            assert self.exit_code is not None
            return self.exit_code if self.exit_code > 0 else 128 - self.exit_code
        if self.bus_error is not None:
            return EXIT_BUS
        if self.failed:
            return EXIT_WORKER_FAILED
        if self.incomplete:
            return EXIT_INCOMPLETE
        if self.faults:
            return EXIT_UNDELIVERABLE
        return 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
