"""Help: every key of the view it was opened over (`?`, F1, or "Help" in the palette)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static

#: Keys every view has that are not bindings of a screen.
ALWAYS = (
    ("tab / shift+tab", "Next / previous control"),
    ("ctrl+p", "Command palette: every action, searchable"),
)


def view_keys(screen: Screen[object]) -> list[tuple[str, str]]:
    """(key, what it does) for each key `screen` answers now: its focused control's, its own and
    the app's, the nearest first, each key once."""
    app = screen.app
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if key in seen or not active.enabled or binding.action in ("stay", "help"):
            continue
        seen.add(key)
        what = binding.tooltip or binding.description or binding.action
        if binding.description and binding.tooltip:
            what = f"{binding.description}: {binding.tooltip}"
        rows.append((app.get_key_display(binding), what))
    return rows + [row for row in ALWAYS if row[0] not in seen]


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def __init__(self, over: Screen[object]) -> None:
        super().__init__()
        self.rows = view_keys(over)
        self.title_text = f"Keys of this view ({type(over).__name__.removesuffix('Screen')})"

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(self.title_text, id="help-title")
            table: DataTable[str] = DataTable(id="help-keys", cursor_type="row", zebra_stripes=True)
            table.add_columns("Key", "What it does")
            for key, what in self.rows:
                table.add_row(key, what)
            yield table
            yield Static("Esc closes this help.", id="help-hint")
