"""Stored conversations over the chat view: Enter continues one with its model, Delete removes
it after asking. They are the same conversations `workbench chat --list` shows."""

from __future__ import annotations

from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from workbench.tui.data import fmt_time, open_store
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.widgets.tables import ConversationTable


class ConversationsScreen(ModalScreen["dict[str, Any] | None"]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Back", tooltip="Close without choosing"),
        Binding("delete,x", "delete", "Delete", tooltip="Delete the highlighted conversation"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.conversations: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        with Vertical(id="conversations"):
            yield Static(Content.styled("Stored conversations", "bold"), id="conversations-title")
            yield Static("loading…", id="conversations-status")
            yield ConversationTable(id="conversations-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(ConversationTable)
        table.add_column("Updated", key="updated", width=11)
        table.add_column("Title", key="title")
        table.add_column("Model", key="model")
        table.add_column("Messages", key="n")
        table.focus()
        self.load()

    @work(thread=True, exclusive=True, group="conversations", exit_on_error=False)
    def load(self) -> None:
        with open_store() as store:
            conversations = store.list_conversations() if store else []
        self.app.call_from_thread(self._show, conversations)

    def _show(self, conversations: list[dict[str, Any]]) -> None:
        self.conversations = conversations
        table = self.query_one(ConversationTable)
        table.clear()
        for conv in conversations:
            table.add_row(fmt_time(conv["updated_at"]), conv["title"] or "(untitled)", conv["model"], str(conv["n"]),
                          key=conv["id"])
        self.query_one("#conversations-status", Static).update(
            f"{len(conversations)} conversation{'s' if len(conversations) != 1 else ''}, newest first; "
            "Enter continues one" if conversations else "no conversations yet: what you say in the chat is kept here")

    def _highlighted(self) -> dict[str, Any] | None:
        table = self.query_one(ConversationTable)
        if not self.conversations or table.cursor_row >= len(self.conversations):
            return None
        return self.conversations[table.cursor_row]

    @on(DataTable.RowSelected, "#conversations-table")
    def _chosen(self) -> None:
        conv = self._highlighted()
        if conv is not None:
            self.dismiss(conv)

    def action_delete(self) -> None:
        conv = self._highlighted()
        if conv is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._delete(conv["id"])

        self.app.push_screen(ConfirmScreen(f"Delete the conversation “{conv['title']}” ({conv['n']} messages)?"),
                             answered)

    @work(thread=True, group="conversations-delete", exit_on_error=False)
    def _delete(self, conversation_id: str) -> None:
        with open_store() as store:
            if store is not None:
                store.delete_conversation(conversation_id)
        self.app.call_from_thread(self.load)
