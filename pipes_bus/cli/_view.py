"""The live human view on stderr: logs, materializations, checks, progress bars.

Uses rich when it is installed and stderr is a terminal; plain lines otherwise.
Custom messages are counted, not printed: a worker may send millions.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pipes_bus._log.items import Event, StreamFault, split_custom
from pipes_bus._orchestrator.result import SessionResult
from pipes_bus._redact import printable, redact
from pipes_bus._wire.schema import (
    Check,
    Closed,
    Custom,
    Log,
    Materialization,
    Opened,
    Output,
    Progress,
)

__all__ = ["make_view", "safe"]


def safe(text: str) -> str:
    """What the view prints of ``text``: one line, no control characters, no credentials.

    Most of what the view shows comes from workers, and anyone who can write to the bus
    can be a worker: escaping here keeps them from forging lines or driving the terminal.
    """
    return printable(redact(text))


_LEVEL_STYLE = {
    "debug": "dim",
    "info": "",
    "warning": "yellow",
    "error": "red",
    "critical": "bold red",
}


def _metadata_text(metadata: dict[str, Any]) -> str:
    parts = []
    for name, value in list(metadata.items())[:6]:
        raw = getattr(value, "value", None)
        if raw is None and hasattr(value, "records"):
            raw = f"<table {len(value.records)} rows>"
        text = str(raw)
        parts.append(f"{name}={text[:40]}")
    more = " ..." if len(metadata) > 6 else ""
    return (" " + " ".join(parts) + more) if parts else ""


class PlainView:
    """Plain lines on stderr, progress throttled to one line per bar every 2 s."""

    def __init__(self, quiet: bool = False, show_output: bool = True) -> None:
        self.quiet = quiet
        self.show_output = show_output
        self.labels: dict[str, str] = {}
        self.count = 0
        self._progress_at: dict[tuple[str, str | None], float] = {}
        self._lost: set[str] = set()

    def start(self, header: str) -> None:
        if not self.quiet:
            self.line(header)

    def line(self, text: str, style: str = "") -> None:
        print(safe(text), file=sys.stderr, flush=True)

    def who(self, writer: str) -> str:
        return self.labels.get(writer, writer)

    def batch(self, batch: list[Event | StreamFault]) -> None:
        """Show a poll's worth of items; custom messages are only counted."""
        for item in split_custom(batch)[1]:
            self.event(item)
        self.count += len(batch)

    def event(self, item: Event | StreamFault) -> None:
        if type(item) is StreamFault:
            self.line(f"! {item}", "bold red")
            return
        assert isinstance(item, Event)
        message = item.message
        kind = type(message)
        if kind is Custom or self.quiet:
            if kind is Opened:
                self._opened(item)
            return
        who = self.who(item.writer)
        if kind is Log:
            assert isinstance(message, Log)
            self.line(
                f"[{who}] {message.level.upper():7} {message.message}",
                _LEVEL_STYLE.get(message.level, ""),
            )
        elif kind is Materialization:
            assert isinstance(message, Materialization)
            version = f" version={message.data_version}" if message.data_version else ""
            metadata = _metadata_text(message.metadata)
            self.line(
                f"[{who}] materialized {message.asset_key}{version}{metadata}",
                "green",
            )
        elif kind is Check:
            assert isinstance(message, Check)
            verdict = "passed" if message.passed else f"FAILED ({message.severity})"
            self.line(
                f"[{who}] check {message.asset_key}:{message.check_name} {verdict}"
                f"{_metadata_text(message.metadata)}",
                "green" if message.passed else ("yellow" if message.severity == "warn" else "red"),
            )
        elif kind is Progress:
            assert isinstance(message, Progress)
            self.progress(item.writer, message)
        elif kind is Output:
            assert isinstance(message, Output)
            if not self.show_output:
                return
            for text in message.text.rstrip("\n").split("\n"):
                self.line(f"[{who} {message.stream}] {text}", "dim")
        elif kind is Opened:
            self._opened(item)
        elif kind is Closed:
            assert isinstance(message, Closed)
            if message.exception is not None:
                exc = message.exception
                self.line(f"[{who}] closed with {exc.type}: {exc.message}", "red")
            else:
                self.line(f"[{who}] closed", "dim")
        else:
            self.line(f"[{who}] unknown message kind {getattr(message, 'kind', '?')!r}", "yellow")

    def _opened(self, item: Event) -> None:
        info = item.message.info  # type: ignore[union-attr]
        self.labels[item.writer] = info.label or (f"pid {info.pid}" if info.pid else item.writer)
        if not self.quiet:
            self.line(f"[{self.who(item.writer)}] opened ({item.writer})", "dim")

    def progress(self, writer: str, message: Progress) -> None:
        key = (writer, message.label)
        now = time.monotonic()
        done = message.total is not None and message.current >= message.total
        if not done and now - self._progress_at.get(key, 0.0) < 2.0:
            return
        self._progress_at[key] = now
        total = f"/{message.total:g}" if message.total is not None else ""
        unit = f" {message.unit}" if message.unit else ""
        label = f"{message.label}: " if message.label else ""
        self.line(f"[{self.who(writer)}] {label}{message.current:g}{total}{unit}")

    def tick(self, result: SessionResult | None = None) -> None:
        """Called after each batch: say which writers were declared lost, once each."""
        if result is None:
            return
        for state in result.lost:
            if state.id not in self._lost:
                self._lost.add(state.id)
                self.line(
                    f"[{self.who(state.id)}] lost: {state.heard_text()}; "
                    f"{state.last_message_text()}",
                    "red",
                )

    def finish(self, result: SessionResult, where: str) -> None:
        custom = result.counts.get("custom", 0)
        total = sum(result.counts.values())
        requests = result.requests.get("requests", {})
        summary = (
            f"{len(result.writers)} writer(s), {total} messages ({custom} custom, "
            f"{len(result.materializations)} materializations, {len(result.checks)} checks, "
            f"{len(result.logs)} logs), {sum(requests.values())} store requests"
        )
        reason = result.reason()
        if reason is None:
            if not self.quiet:
                self.line(f"session {result.session} done: {summary}", "green")
                if not result.writers and result.diagnostics:
                    self.line("no worker reported into this session:", "yellow")
                    self.line(result.diagnostics, "dim")
        else:
            if not self.quiet:
                self.line(f"session {result.session}: {summary}")
            for problem in result.problems()[1:]:  # problems are shown even with --quiet
                self.line(f"  also: {problem}", "red")
            if result.diagnostics and not self.quiet:
                self.line(result.diagnostics, "dim")
            self.line(f"pipes-bus: {reason}", "bold red")
        if not self.quiet:
            self.line(f"events are kept in {where}", "dim")


class RichView(PlainView):
    """Rich rendering with live progress bars."""

    def __init__(self, quiet: bool = False, show_output: bool = True) -> None:
        super().__init__(quiet, show_output)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True, highlight=False)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.counter = self.bars.add_task("messages", total=None)
        self._tasks: dict[tuple[str, str | None], Any] = {}

    def start(self, header: str) -> None:
        self.bars.start()
        super().start(header)

    def line(self, text: str, style: str = "") -> None:
        from rich.text import Text

        self.console.print(Text(safe(text), style=style or ""))

    def progress(self, writer: str, message: Progress) -> None:
        key = (writer, message.label)
        task = self._tasks.get(key)
        description = f"{self.who(writer)} {message.label or ''}".strip()
        if task is None:
            task = self._tasks[key] = self.bars.add_task(description, total=message.total)
        self.bars.update(task, completed=message.current, total=message.total)

    def tick(self, result: SessionResult | None = None) -> None:
        super().tick(result)
        text = f"messages: {self.count}"
        if result is not None and result.writers:
            running = sum(1 for w in result.writers.values() if not w.closed and not w.lost)
            text += f"  writers: {running} running of {len(result.writers)}"
            if result.lost:
                text += f", {len(result.lost)} lost"
        self.bars.update(self.counter, completed=self.count, description=text)

    def finish(self, result: SessionResult, where: str) -> None:
        self.tick(result)
        self.bars.stop()
        super().finish(result, where)


def make_view(*, quiet: bool, rich: bool | None = None, show_output: bool = True) -> PlainView:
    """The best view this terminal supports. ``show_output``: print captured output events
    (off where the command's own output already reaches the terminal)."""
    if rich is None:
        rich = sys.stderr.isatty()
    if rich:
        try:
            return RichView(quiet, show_output)
        except ImportError:
            pass
    return PlainView(quiet, show_output)
