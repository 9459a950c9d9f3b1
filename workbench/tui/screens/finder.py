"""A stage's finder over its form: search (the Hub, say), see each match's size and licence,
and choose one to fill the option. The search runs on a thread; the form stays as it was."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Static

from workbench.errors import UserError
from workbench.stages import Finder
from workbench.tui.widgets.tables import FinderTable

LIMIT = 30


class FinderScreen(ModalScreen["dict[str, Any] | None"]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Back", tooltip="Close without choosing"),
    ]

    def __init__(self, finder: Finder, query: str = "") -> None:
        super().__init__()
        self.finder = finder
        self.query_text = query
        self.rows: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="finder"):
            yield Static(Content.styled(self.finder.title, "bold"), id="finder-title")
            yield Input(self.query_text, placeholder="name to search for; Enter searches", id="finder-query",
                        compact=True)
            yield Static("", id="finder-status")
            yield FinderTable(id="finder-results", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(FinderTable)
        for key, header, _ in self.finder.columns:
            table.add_column(header, key=key)
        self.query_one("#finder-query", Input).focus()
        if self.query_text.strip():
            self.search(self.query_text)

    @on(Input.Submitted, "#finder-query")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.search(event.value)

    @work(thread=True, exclusive=True, group="finder", exit_on_error=False)
    def search(self, query: str) -> None:
        self.app.call_from_thread(self._status, f"searching for {query.strip()!r}…")
        try:
            rows = self.finder.search(query.strip(), LIMIT)
        except UserError as exc:
            self.app.call_from_thread(self._status, Content.styled(str(exc), "$text-error"))
            return
        except Exception as exc:  # a finder that fails must not take the form with it
            self.app.call_from_thread(self._status, Content.styled(f"{type(exc).__name__}: {exc}", "$text-error"))
            return
        self.app.call_from_thread(self._show, query.strip(), rows)

    def _status(self, text: str | Content) -> None:
        self.query_one("#finder-status", Static).update(text)

    def _show(self, query: str, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        table = self.query_one(FinderTable)
        table.clear()
        for i, row in enumerate(rows):
            table.add_row(*(Finder.cell(row.get(key), kind) for key, _, kind in self.finder.columns), key=str(i))
        if not rows:
            self._status(f"nothing matches {query!r}")
            return
        self._status(f"{len(rows)} match{'es' if len(rows) > 1 else ''} for {query!r}, best first; "
                     "Enter uses one, Esc goes back")
        table.move_cursor(row=0)
        table.focus()

    @on(DataTable.RowSelected, "#finder-results")
    def _chosen(self, event: DataTable.RowSelected) -> None:
        index = int(str(event.row_key.value))
        if 0 <= index < len(self.rows):
            self.dismiss(self.rows[index])
