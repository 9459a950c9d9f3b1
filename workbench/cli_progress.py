"""The CLI's view of a running stage: a Rich progress bar with ETA and a live metric line.

On a terminal it redraws in place; elsewhere (CI logs, pipes) it prints a plain line at most every
few seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from workbench.hardware import fmt_bytes


class CountColumn(ProgressColumn):
    """`12/300 step`, or `10.0 MiB/32.0 MiB` when the stage counts bytes."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit") or ""
        total = task.total
        if unit in ("B", "bytes"):
            done = fmt_bytes(task.completed)
            return Text(f"{done}/{fmt_bytes(total)}" if total else done)
        count = f"{int(task.completed)}/{int(total)}" if total is not None else f"{int(task.completed)}"
        return Text(f"{count} {unit}".rstrip())


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --:--"
    s = int(seconds)
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60:02d}:{s % 60:02d}"


def fmt_metrics(values: dict[str, float], limit: int = 6) -> str:
    parts = []
    for k, v in list(values.items())[:limit]:
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


class RunView:
    def __init__(self, run: Any, quiet: bool = False):
        self.run = run
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self.tty = self.console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            CountColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
        )
        self.task = self.progress.add_task(run.stage, total=None, unit="", eta="ETA --:--")
        self.metrics: dict[str, float] = {}
        self.metric_line = Text("", style="dim")
        self.live: Live | None = None
        self._last_plain = 0.0

    def __enter__(self) -> RunView:
        if self.tty:
            self.live = Live(Group(self.progress, self.metric_line), console=self.console,
                             refresh_per_second=8, transient=False)
            self.live.__enter__()
        elif not self.quiet:
            self.console.print(f"run {self.run.id} ({self.run.stage}) started")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    def update(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        t = event["type"]
        if t == "progress":
            desc = event.get("desc") or self.run.stage
            self.progress.update(self.task, completed=event["step"], total=event.get("total"),
                                 description=desc, unit=event.get("unit") or "",
                                 eta=fmt_eta(event.get("eta_s")))
            self._plain(f"{desc}: {_count(event)} {fmt_eta(event.get('eta_s'))}  {fmt_metrics(self.metrics)}",
                        force=event.get("total") is not None and event["step"] >= event["total"])
        elif t == "metric":
            self.metrics.update(event.get("values", {}))
            self.metric_line.plain = fmt_metrics(self.metrics)
        elif t == "log":
            level = event.get("level", "info")
            style = {"warning": "yellow", "error": "red"}.get(level, "")
            self.console.print(Text(event["message"], style=style))
        elif t == "started" and event.get("resume_from"):
            self.console.print(f"resuming from {event['resume_from']}")
        elif t == "checkpoint" and not self.tty:
            self.console.print(f"checkpoint at step {event['step']}")
        elif t == "artifact":
            self.console.print(f"[green]✓[/] {event['kind']} [bold]{event['id']}[/] '{event['name']}'")

    def _plain(self, line: str, force: bool = False) -> None:
        if self.tty:
            return
        now = time.monotonic()
        if force or now - self._last_plain >= 5:
            self._last_plain = now
            self.console.print(line)
            sys.stderr.flush()


def _count(event: dict[str, Any]) -> str:
    unit, step, total = event.get("unit") or "", event["step"], event.get("total")
    if unit in ("B", "bytes"):
        return f"{fmt_bytes(step)}/{fmt_bytes(total) if total else '?'}"
    return f"{step}/{total if total is not None else '?'} {unit}".rstrip()
