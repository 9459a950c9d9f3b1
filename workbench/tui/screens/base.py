"""What every view shares: the navigation bar on top, the key bindings in the footer, and
one place where a failed background job becomes a notification."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from workbench.errors import UserError
from workbench.tui.widgets.navbar import NavBar


class WorkbenchScreen(Screen[None]):
    #: The view this screen belongs to, highlighted in the navigation bar.
    VIEW = "pipeline"

    def compose(self) -> ComposeResult:
        yield NavBar(self.VIEW)
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def themed(self, text: str, variable: str) -> Text:
        """Rich text in a theme colour, for widgets that measure Rich text (DataTable cells)."""
        return Text(text, style=self.app.theme_variables.get(variable, ""))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event.worker)


def report_worker_error(node: App[None] | Screen[None], worker: Worker[object]) -> None:
    """Background jobs run with exit_on_error=False; their failures end here, as a notice."""
    if worker.state != WorkerState.ERROR or worker.error is None:
        return
    error = worker.error
    if isinstance(error, UserError):
        node.notify(str(error), title="Cannot do that", severity="error", timeout=8)
    else:
        node.notify(f"{type(error).__name__}: {error}", title=f"{worker.name or 'background job'} failed",
                    severity="error", timeout=8)
