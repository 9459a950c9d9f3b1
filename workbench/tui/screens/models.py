"""Models: every artifact in the workspace as a lineage tree with its key metrics, the chosen
one's details, the evaluation comparison as a table and a bar chart, and delete."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Select, Static, TabbedContent, TabPane, Tree

from workbench import locations
from workbench.hardware import fmt_bytes
from workbench.store import Artifact
from workbench.tui.data import (
    CHAT_KINDS,
    Comparison,
    Node,
    comparison_for,
    fmt_num,
    fmt_time,
    forest,
    key_metrics,
    open_store,
)
from workbench.tui.screens.base import WorkbenchScreen
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.widgets.plots import BarPlot
from workbench.tui.widgets.tree import FittedTree

if TYPE_CHECKING:
    from textual.widgets.tree import TreeNode

    from workbench.tui.app import WorkbenchApp

#: Theme colour of each kind in the tree (resolved from the theme, so light and dark both work).
KIND_COLOR = {"model": "text-accent", "adapter": "text-secondary", "classifier": "text-secondary",
              "gguf": "text-success", "dataset": "text-warning", "tokenizer": "text-warning",
              "eval-report": "text-primary"}


def workspace_path(path: Path) -> str:
    """Paths inside the workspace are shown relative to it: shorter, and the same everywhere."""
    home = locations.home()
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


class ModelsScreen(WorkbenchScreen):
    VIEW = "models"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("v", "toggle_view", "Details/Compare", tooltip="Switch between details and the evaluation comparison"),
        Binding("t", "chat", "Chat", tooltip="Chat with the highlighted model"),
        Binding("i", "import_model", "Import…",
                tooltip="Import a model from disk: a Hugging Face or LitGPT folder, a GGUF file or a LoRA adapter"),
        Binding("delete,x", "delete", "Delete", tooltip="Delete the highlighted artifact and its files"),
    ]
    app: WorkbenchApp

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: list[Artifact] = []
        self.stages: dict[str, str] = {}
        self.comparison: Comparison | None = None
        self._signature: str = ""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="models-main"):
            tree: Tree[str] = FittedTree("workspace", id="lineage")
            tree.show_root = False
            yield tree
            with TabbedContent(id="model-tabs"):
                with TabPane("Details", id="details"), VerticalScroll():
                    yield Static("", id="art-detail")
                with TabPane("Comparison", id="comparison"):
                    yield Static("", id="comparison-note")
                    yield Select[str]([], prompt="metric", id="metric", compact=True)
                    yield DataTable(id="comparison-table", cursor_type="none", zebra_stripes=True)
                    yield BarPlot(id="comparison-chart")

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _: self._recolor())
        self.set_interval(3.0, self.load)
        self.load()
        self.query_one("#lineage", Tree).focus()

    # data ---------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="artifacts", exit_on_error=False)
    def load(self) -> None:
        with open_store() as store:
            artifacts = store.list_artifacts() if store else []
            stages = {r.id: r.stage for r in store.list_runs(limit=5000)} if store else {}
        self.app.call_from_thread(self._show, artifacts, stages)

    def _show(self, artifacts: list[Artifact], stages: dict[str, str]) -> None:
        signature = json.dumps([[a.id, a.metrics, a.parents] for a in artifacts], default=str)
        if signature == self._signature:
            return
        self._signature = signature
        self.artifacts, self.stages = artifacts, stages
        tree: Tree[str] = self.query_one("#lineage", Tree)
        selected = self.selected.id if self.selected else None
        tree.clear()

        def add(parent: TreeNode[str], node: Node) -> None:
            art = node.artifact
            child = parent.add(self._label(art), data=art.id, expand=True, allow_expand=bool(node.children))
            for sub in node.children:
                add(child, sub)

        for root in forest(artifacts):
            add(tree.root, root)
        if not artifacts:
            tree.root.add_leaf(Text("no artifacts yet: run a stage from the Pipeline view", "dim"))
        self.call_after_refresh(self._reselect, selected)

    def _recolor(self) -> None:
        self._signature = ""
        self._show(self.artifacts, self.stages)

    def _label(self, art: Artifact) -> Text:
        # Tree labels are Rich text, which knows no theme variables: look the colour up.
        color = self.app.theme_variables.get(KIND_COLOR.get(art.kind, ""), "")
        label = Text.assemble((art.kind, color), " ", (art.name, "bold"))
        metrics = key_metrics(art)
        if metrics:
            label.append(f"  {metrics}", "dim")
        return label

    def _reselect(self, art_id: str | None) -> None:
        tree: Tree[str] = self.query_one("#lineage", Tree)
        line = next((n for n in range(tree.last_line + 1)
                     if (node := tree.get_node_at_line(n)) is not None and node.data == art_id), 0)
        tree.cursor_line = line
        self._show_selected()

    @property
    def selected(self) -> Artifact | None:
        node = self.query_one("#lineage", Tree).cursor_node
        art_id = node.data if node is not None else None
        return next((a for a in self.artifacts if a.id == art_id), None)

    # the right-hand side --------------------------------------------------------------------

    @on(Tree.NodeHighlighted)
    def _show_selected(self) -> None:
        art = self.selected
        self.query_one("#art-detail", Static).update(self._details(art) if art else "")
        self.comparison = comparison_for(art, self.artifacts) if art else None
        self._show_comparison()

    def _details(self, art: Artifact) -> Content:
        names = {a.id: a for a in self.artifacts}
        rows: list[tuple[str, str]] = [
            ("kind", art.kind), ("name", art.name), ("id", art.id), ("size", fmt_bytes(art.size_bytes)),
            ("created", fmt_time(art.created_at)),
        ]
        if art.run_id:
            rows.append(("made by", f"{self.stages.get(art.run_id, '?')} run {art.run_id}"))
        for parent in art.parents:
            p = names.get(parent)
            rows.append(("from", f"{p.kind} {p.name} ({p.id})" if p else f"{parent} (deleted)"))
        rows += [(k, fmt_num(v)) for k, v in art.metrics.items()]
        # Metadata often repeats a metric (train_rows); each field is shown once.
        shown = {k for k, _ in rows}
        rows += [(k, fmt_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))
                 for k, v in art.metadata.items()
                 if k not in shown and not isinstance(v, (dict, list)) and len(str(v)) < 60]
        rows.append(("path", workspace_path(art.path)))
        # Short labels line up; a longer one keeps two spaces before its value.
        return Content("\n").join(
            Content.assemble(Content.styled(f"{k:<10}" if len(k) < 10 else f"{k}  ", "bold"), v)
            for k, v in rows)

    def _show_comparison(self) -> None:
        comp = self.comparison
        note = self.query_one("#comparison-note", Static)
        table = self.query_one("#comparison-table", DataTable)
        select = self.query_one("#metric", Select)
        table.clear(columns=True)
        select.display = table.display = self.query_one(BarPlot).display = comp is not None
        if comp is None:
            note.update("No evaluation compares this artifact yet; run the Evaluate stage.")
            return
        note.update(Content.assemble("from ", Content.styled(comp.report.name, "bold"), f" ({comp.report.id})"))
        table.add_column("metric", key="metric")
        for model in comp.models:
            table.add_column(comp.labels[model][:14], key=model)
        for metric in comp.metrics:
            table.add_row(metric, *(fmt_num(v) for v in comp.values(metric)))
        names = list(comp.metrics)
        current = select.value if select.value in names else (names[0] if names else Select.NULL)
        with self.prevent(Select.Changed):
            select.set_options([(n, n) for n in names])
            if current is not Select.NULL:
                select.value = current
        self._chart()

    @on(Select.Changed, "#metric")
    def _chart(self) -> None:
        comp = self.comparison
        metric = self.query_one("#metric", Select).value
        if comp is None or not isinstance(metric, str):
            return
        pairs = [(comp.labels[m], v) for m, v in zip(comp.models, comp.values(metric), strict=True) if v is not None]
        self.query_one(BarPlot).show(metric, [p[0] for p in pairs], [p[1] for p in pairs])

    # actions ------------------------------------------------------------------------------

    def action_toggle_view(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "comparison" if tabs.active == "details" else "details"

    def action_chat(self) -> None:
        art = self.selected
        if art is None or art.kind not in CHAT_KINDS:
            self.notify("Choose a model or GGUF artifact to chat with.", severity="warning")
            return
        self.app.open_chat(art.id)

    def action_import_model(self) -> None:
        """The import stage's form (path, name, base); the run shows in the Runs view like any other."""
        entry = next((e for e in self.app.catalog if e.name == "import"), None)
        if entry is None or entry.info is None:
            self.notify("The import stage is not installed.", severity="error")
            return
        self.app.open_stage("import")

    def action_delete(self) -> None:
        art = self.selected
        if art is None:
            return
        made_from = [a for a in self.artifacts if art.id in a.parents]
        extra = f"\n{len(made_from)} artifact(s) made from it stay." if made_from else ""
        question = f"Delete {art.kind} '{art.name}' ({art.id}) and {fmt_bytes(art.size_bytes)} of files?{extra}"

        def answered(yes: bool | None) -> None:
            if yes:
                self.delete(art.id)

        self.app.push_screen(ConfirmScreen(question), answered)

    @work(exclusive=True, group="delete", exit_on_error=False)
    async def delete(self, art_id: str) -> None:
        """Through `workbench models rm`, so files and index go exactly as the CLI removes them."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workbench.cli", "models", "rm", art_id, "--yes", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            self.notify(err.decode(errors="replace").strip() or f"exit code {proc.returncode}",
                        title=f"Could not delete {art_id}", severity="error")
        else:
            self.notify(f"deleted {art_id}")
        self.load()
