"""The pipeline: every lifecycle stage in order, then third-party stages, each with its state
for the selected model. Enter opens a stage's options form (or the chat)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.content import Content
from textual.widgets import DataTable, Select, Static

from workbench.tui.data import (
    MODEL_KINDS,
    STATE_STYLE,
    Entry,
    StageState,
    clip,
    open_store,
    pipeline_states,
)
from workbench.tui.screens.base import WorkbenchScreen
from workbench.tui.widgets.tables import StageTable

if TYPE_CHECKING:
    from workbench.store import Artifact
    from workbench.tui.app import WorkbenchApp

REFRESH_S = 2.0


class PipelineScreen(WorkbenchScreen):
    VIEW = "pipeline"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "focus_model", "Select model", tooltip="Choose the model whose pipeline is shown"),
        Binding("g", "refresh", "Refresh", show=False),
    ]
    app: WorkbenchApp

    def __init__(self) -> None:
        super().__init__()
        self.models: list[Artifact] = []
        self.states: dict[str, StageState] = {}
        self._rows: list[str] = []

    def compose_body(self) -> ComposeResult:
        yield Select[str]([], prompt="All models (none selected)", id="model", compact=True)
        yield StageTable(id="stages", cursor_type="row", zebra_stripes=True)
        yield Static("", id="stage-detail")

    def on_mount(self) -> None:
        table = self.query_one(StageTable)
        # Text labels: a str label goes through Rich markup, whose emoji table alone costs the
        # first frame tens of milliseconds.
        table.add_column(Text("Stage"), key="stage", width=16)
        table.add_column(Text("State"), key="state", width=15)
        table.add_column(Text("What it does"), key="summary")
        # Rows and states come after the first frame: the states' worker opens the store.
        self.watch(self.app, "catalog_version", lambda _: self._show_catalog(), init=False)
        self.call_after_refresh(self._show_catalog)
        self.set_interval(REFRESH_S, self.action_refresh)
        table.focus()

    # data ---------------------------------------------------------------------------------

    @property
    def model_id(self) -> str | None:
        value = self.query_one("#model", Select).value
        return value if isinstance(value, str) else None

    def action_refresh(self) -> None:
        self.load_states(self.model_id)

    @work(thread=True, exclusive=True, group="pipeline-states", exit_on_error=False)
    def load_states(self, model_id: str | None) -> None:
        entries = list(self.app.catalog)
        with open_store() as store:
            models = [a for a in store.list_artifacts() if a.kind in MODEL_KINDS] if store else []
            states = pipeline_states(store, entries, model_id)
        self.app.call_from_thread(self._show_states, models, states)

    def _show_catalog(self) -> None:
        table = self.query_one(StageTable)
        names = [e.name for e in self.app.catalog]
        if names != self._rows:
            table.clear()
            for entry in self.app.catalog:
                table.add_row(*self._cells(entry), key=entry.name)
            self._rows = names
        else:
            for entry in self.app.catalog:
                table.update_cell(entry.name, "summary", self._cells(entry)[2], update_width=True)
        self.action_refresh()

    def _cells(self, entry: Entry) -> tuple[Content, Content, str]:
        label = Content(entry.label) if entry.lifecycle else Content.styled(entry.label, "italic")
        text, style = STATE_STYLE[self.states.get(entry.name, StageState("loading")).state]
        return label, Content.styled(text, style), clip(entry.summary, self._summary_width())

    def _summary_width(self) -> int:
        """What the last column has left of the screen: the other columns and the cell padding."""
        return max(12, self.size.width - 16 - 15 - 3 * 2 - 2)

    def on_resize(self) -> None:
        for entry in self.app.catalog:
            if entry.name in self._rows:
                self.query_one(StageTable).update_cell(entry.name, "summary", self._cells(entry)[2], update_width=True)

    def _show_states(self, models: list[Artifact], states: dict[str, StageState]) -> None:
        select = self.query_one("#model", Select)
        options = [(f"{a.name} · {a.kind} · {a.id}", a.id) for a in reversed(models)]
        if [o[1] for o in options] != [m.id for m in reversed(self.models)]:
            current = select.value
            with self.prevent(Select.Changed):
                select.set_options(options)
                if any(value == current for _, value in options):
                    select.value = current
        self.models = models
        self.states = states
        table = self.query_one(StageTable)
        for entry in self.app.catalog:
            if entry.name in self._rows:
                table.update_cell(entry.name, "state", self._cells(entry)[1])
        self._show_detail()

    # interaction --------------------------------------------------------------------------

    @on(Select.Changed, "#model")
    def _model_changed(self) -> None:
        self.action_refresh()

    def action_focus_model(self) -> None:
        self.query_one("#model", Select).focus()

    @on(DataTable.RowHighlighted)
    def _show_detail(self) -> None:
        entry = self._highlighted()
        detail = self.query_one("#stage-detail", Static)
        if entry is None:
            detail.update("")
            return
        detail.update(describe(entry, self.states.get(entry.name)))

    def _highlighted(self) -> Entry | None:
        table = self.query_one(StageTable)
        if not self._rows or table.cursor_row >= len(self._rows):
            return None
        name = self._rows[table.cursor_row]
        return next((e for e in self.app.catalog if e.name == name), None)

    @on(DataTable.RowSelected)
    def _open(self) -> None:
        entry = self._highlighted()
        if entry is None:
            return
        if entry.kind == "command":
            self.app.open_chat(self.model_id)
        elif not entry.loaded:
            self.notify(entry.summary, title=f"{entry.label} cannot run", severity="warning")
        else:
            self.app.open_stage(entry.name, self.model_id)


def describe(entry: Entry, state: StageState | None) -> Content:
    """Two lines under the table: what the stage takes and makes, and its state's detail."""
    lines: list[Content] = []
    stage: Any = entry.stage_cls
    if stage is not None:
        caps = [c for c, on_ in (("resume", stage.supports_resume), ("cancel", stage.supports_cancel),
                                 ("GPU", stage.needs_gpu)) if on_]
        origin = "" if entry.lifecycle or entry.info is None else f"plugin {entry.info.package} {entry.info.version} · "
        lines.append(Content.assemble(
            Content.styled(entry.name, "bold"), f"  {origin}takes {', '.join(stage.consumes) or 'nothing'}",
            f" → makes {', '.join(stage.produces) or 'nothing'}",
            f" · can {', '.join(caps)}" if caps else ""))
    else:
        lines.append(Content.assemble(Content.styled(entry.name, "bold"), "  ", entry.summary))
    if state is not None and state.detail:
        lines.append(Content.styled(f"{state.state}: {state.detail}", "$text-muted"))
    return Content("\n").join(lines)
