"""DataTables whose Enter key is named in the footer (a plain DataTable hides it)."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import DataTable


class StageTable(DataTable[object]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Open", tooltip="Open the stage's options")]


class RunTable(DataTable[object]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Monitor", tooltip="Follow the run")]


class FinderTable(DataTable[object]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Use", tooltip="Fill the option with this row")]


class ConversationTable(DataTable[object]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Continue", tooltip="Continue the conversation with its model")]
