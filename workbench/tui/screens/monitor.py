"""Monitor: what `workbench serve` answers, live. Request rate, latency and time to first token,
errors, tokens/s, and input drift against the served model's training data, read from the
request log every few seconds on a thread, so the view never waits for the database."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widgets import DataTable, Sparkline, Static

from workbench import monitoring
from workbench.tui.screens.base import WorkbenchScreen

#: The windows `w` steps through: (label, seconds).
WINDOWS = (("15 min", 900), ("1 hour", 3600), ("24 hours", 86400))
REFRESH_S = 2.0


class MonitorScreen(WorkbenchScreen):
    VIEW = "monitor"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("w", "window", "Window", tooltip="Step the time window: 15 minutes, 1 hour, 24 hours"),
        Binding("r", "refresh", "Refresh", tooltip="Read the request log now"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.window = 1
        self.shown: dict[str, Any] | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("reading the request log…", id="monitor-status")
        yield Static("", id="monitor-rate-label")
        yield Sparkline([0] * monitoring.TIMELINE_MINUTES, id="monitor-rate")
        yield DataTable(id="monitor-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#monitor-table", DataTable)
        table.add_column("figure", key="figure", width=16)
        table.add_column("value", key="value")
        self.set_interval(REFRESH_S, self.action_refresh)
        self.action_refresh()

    def action_window(self) -> None:
        self.window = (self.window + 1) % len(WINDOWS)
        self.action_refresh()

    def action_refresh(self) -> None:
        self.load(WINDOWS[self.window])

    @work(thread=True, exclusive=True, group="monitor", exit_on_error=False)
    def load(self, window: tuple[str, int]) -> None:
        rep = monitoring.report(since=time.time() - window[1])
        self.app.call_from_thread(self._show, rep, window[0])

    def _show(self, rep: dict[str, Any], window: str) -> None:
        self.shown = rep
        status = self.query_one("#monitor-status", Static)
        if not rep["recorded"]:
            status.update(Content("no requests recorded yet: `workbench serve MODEL` records every request it answers"))
        else:
            servers = [f"serving {s['model']} at {s['url']}" for s in rep["servers"]] or ["no server is running"]
            status.update(Content.assemble(Content.styled("; ".join(servers), "bold"),
                                           f" · log {rep['bytes'] / 2**20:.2f} MiB"))
        per_minute = rep["per_minute"]
        self.query_one("#monitor-rate-label", Static).update(
            f"requests per minute, last {len(per_minute)} min (now {per_minute[-1]}); figures: last {window}")
        self.query_one("#monitor-rate", Sparkline).data = per_minute
        table = self.query_one("#monitor-table", DataTable)
        table.clear()
        if rep["recorded"] and not rep["models"]:
            table.add_row("", f"no requests in the last {window}")
        for n, m in enumerate(rep["models"]):
            table.add_row(self.themed("model", "text-accent"), self.themed(f"{m['model']} ({m['model_ref']})", "text-accent"),
                          key=f"model-{n}")
            for label, value in [*monitoring.figure_rows(m), *monitoring.drift_rows(m["drift"])]:
                shift = "shift" in value and "PSI" in label
                table.add_row(label, self.themed(value, "text-warning") if shift else value)
