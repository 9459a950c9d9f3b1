"""Doctor: what `workbench doctor` reports (Python, torch, device, precision, llama.cpp, disk,
plugins). It runs as a child process because finding out imports torch."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widgets import DataTable, LoadingIndicator, Static

from workbench.tui.screens.base import WorkbenchScreen

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp

SECTIONS = ("torch", "llama_cpp", "packages", "plugins")


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(section, key, value) rows in the order the CLI prints them."""
    rows = [("system", k, str(v)) for k, v in report.items() if not isinstance(v, dict)]
    for section in (*SECTIONS, *(k for k in report if k not in SECTIONS)):
        value = report.get(section)
        if isinstance(value, dict):
            rows += [(section, str(k), str(v)) for k, v in value.items()]
    return rows


class DoctorScreen(WorkbenchScreen):
    VIEW = "doctor"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "refresh", "Check again", tooltip="Run `workbench doctor` again"),
    ]
    app: WorkbenchApp

    def compose_body(self) -> ComposeResult:
        yield Static("", id="doctor-status")
        yield LoadingIndicator(id="doctor-loading")
        yield DataTable(id="doctor", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        table = self.query_one("#doctor", DataTable)
        table.add_column("section", key="section", width=10)
        table.add_column("what", key="what", width=22)
        table.add_column("value", key="value")
        self.action_refresh()

    def action_refresh(self) -> None:
        self.query_one("#doctor-loading").display = True
        self.query_one("#doctor-status", Static).update("checking this machine (this imports torch, in a child process)…")
        self.check()

    @work(exclusive=True, group="doctor", exit_on_error=False)
    async def check(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.app.doctor_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        self.query_one("#doctor-loading").display = False
        status = self.query_one("#doctor-status", Static)
        try:
            report = json.loads(out)
        except json.JSONDecodeError:
            tail = err.decode(errors="replace").strip().splitlines()
            status.update(Content.styled(f"`workbench doctor` failed: {tail[-1] if tail else proc.returncode}",
                                         "$text-error"))
            return
        table = self.query_one("#doctor", DataTable)
        table.clear()
        for section, key, value in report_rows(report):
            table.add_row(section, key, self.themed(value, "text-error") if "error" in value.lower() else value)
        torch = report.get("torch", {})
        device = f"{torch.get('device')} · {torch.get('precision')}" if "device" in torch else "torch unavailable"
        status.update(Content.assemble(Content.styled("this machine: ", "bold"), device))
        table.focus()
