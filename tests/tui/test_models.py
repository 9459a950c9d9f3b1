"""Models view, driven with Pilot over a real workspace: the lineage tree with key metrics,
details, the evaluation comparison as a table and a chart, and delete with confirmation."""

from __future__ import annotations

import re

from textual.widgets import Select, TabbedContent, Tree

from tests.tui.helpers import SIZE, add_artifact, lineage_workspace, screen_text, shows, wait_for
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.models import ModelsScreen
from workbench.tui.widgets.plots import BarPlot


async def open_models(pilot) -> ModelsScreen:  # type: ignore[no-untyped-def]
    await pilot.press("3")
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.artifacts, what="artifacts")
    return app.screen  # type: ignore[return-value]


async def highlight(pilot, screen: ModelsScreen, art_id: str) -> None:  # type: ignore[no-untyped-def]
    tree: Tree[str] = screen.query_one(Tree)
    line = next(n for n in range(tree.last_line + 1) if tree.get_node_at_line(n).data == art_id)  # type: ignore[union-attr]
    tree.cursor_line = line
    await wait_for(pilot, lambda: screen.selected is not None and screen.selected.id == art_id, what=art_id)


async def test_lineage_tree_shows_the_chain_with_metrics_and_details() -> None:
    lineage_workspace()
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        lines = screen_text(app).splitlines()
        chain = ["model tiny-base", "adapter tiny-lora", "model tiny-dpo", "gguf tiny-dpo-q4_k_m"]
        found = [next(i for i, line in enumerate(lines) if name in line) for name in chain]
        assert found == sorted(found)
        # Each step of the chain is indented below the one it was made from.
        indents = [lines[i].index(name) for i, name in zip(found, chain, strict=True)]
        assert indents == sorted(indents) and len(set(indents)) == 4
        assert "val_loss=3.41" in lines[found[0]]

        await highlight(pilot, screen, "adapter-260101-cccccc")
        assert shows(app, "finetune.lora run", "from      model tiny-base", "val_loss  2.12")


async def test_evaluation_comparison_as_table_and_chart() -> None:
    lineage_workspace()
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await highlight(pilot, screen, "model-260101-dddddd")
        await pilot.press("v")
        await wait_for(pilot, lambda: screen.query_one(TabbedContent).active == "comparison", what="the tab")
        assert shows(app, "three-way", "tiny-base", "tiny-lora", "tiny-dpo", "val_loss", "accuracy")
        chart = screen.query_one(BarPlot)
        assert chart._title == "val_loss" and chart._values == [3.41, 2.12, 2.05]
        screen.query_one("#metric", Select).value = "accuracy"
        await wait_for(pilot, lambda: chart._title == "accuracy", what="the accuracy chart")
        assert chart._values == [0.25, 0.5, 0.75]
        assert chart._labels == ["tiny-base", "tiny-lora", "tiny-dpo"]

        await highlight(pilot, screen, "gguf-260101-eeeeee")
        assert shows(app, "No evaluation compares")


async def test_delete_asks_first_and_removes_files_and_index() -> None:
    store = lineage_workspace()
    path = store.find_artifact("gguf-260101-eeeeee").path
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await highlight(pilot, screen, "gguf-260101-eeeeee")
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert shows(app, "Delete gguf 'tiny-dpo-q4_k_m'", "2.0 KiB")
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is screen, what="the models view")
        assert path.exists() and any(a.id == "gguf-260101-eeeeee" for a in Store().list_artifacts())

        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: "tiny-dpo-q4_k_m" not in screen_text(app), timeout=30, what="deletion")
    assert not path.exists()
    assert all(a.id != "gguf-260101-eeeeee" for a in Store().list_artifacts())


async def test_empty_workspace_says_what_to_do() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: shows(app, "no artifacts yet"), what="the hint")


async def test_details_keep_labels_apart_from_values_and_show_each_field_once() -> None:
    store = lineage_workspace()
    add_artifact(store, "dataset-260101-eeeeee", "dataset", "corpus", t=9,
                 metrics={"train_rows": 9689, "val_rows": 310},
                 metadata={"train_rows": 9689, "val_rows": 310, "characters": 2382506,
                           "near_duplicates_removed": 82})
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_models(pilot)
        await highlight(pilot, screen, "dataset-260101-eeeeee")
        text = screen_text(app)
        assert re.search(r"train_rows +9,689", text) and re.search(r"characters +2,382,506", text), text
        assert re.search(r"near_duplicates_removed +82", text), text
        # The tree line shows "train_rows=9,689"; the details pane shows each field once.
        assert len(re.findall(r"train_rows +9,689", text)) == 1 and len(re.findall(r"val_rows +310", text)) == 1
