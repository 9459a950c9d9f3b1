"""The bar across the top: the views (click or press their number) and how many runs are live."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.content import Content
from textual.widgets import Static

#: (mode, label) in the order of their number keys.
VIEWS: tuple[tuple[str, str], ...] = (
    ("pipeline", "Pipeline"),
    ("runs", "Runs"),
    ("models", "Models"),
    ("chat", "Chat"),
    ("doctor", "Doctor"),
    ("arena", "Arena"),
)


class NavBar(Horizontal):
    def __init__(self, active: str) -> None:
        super().__init__()
        self.active = active

    def compose(self) -> ComposeResult:
        parts: list[Content | str] = [Content.styled(" workbench ", "bold $text-accent")]
        for number, (mode, label) in enumerate(VIEWS, start=1):
            style = "reverse bold" if mode == self.active else ""
            link = Content.from_markup(
                f"[@click=app.switch_mode('{mode}')] {number} {label} [/]"
            ).stylize(style)
            parts.extend([" ", link])
        yield Static(Content.assemble(*parts), id="nav-views")
        yield Static("", id="nav-status")

    def on_mount(self) -> None:
        self.watch(self.app, "active_runs", self._show_active)

    def _show_active(self, count: int) -> None:
        text = Content.styled(f"● {count} running ", "$text-accent") if count else Content("")
        self.query_one("#nav-status", Static).update(text)
