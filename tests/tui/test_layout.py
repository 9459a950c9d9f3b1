"""What a newcomer sees first: a form's essentials above its folded options, a chart only where
there is a curve, and text cut to fit 80×24 ends with "…" (the pipeline table, the runs list, the
models tree, the chat's model picker and status line)."""

from __future__ import annotations

from textual.widgets import Collapsible

from tests.tui.helpers import FAKE_CHAT, SIZE, add_artifact, add_finished_run, screen_text, wait_for
from tests.tui.test_pipeline import open_form
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.data import LIFECYCLE
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.models import ModelsScreen
from workbench.tui.screens.runs import RunMonitorScreen
from workbench.tui.widgets.option_field import OptionField
from workbench.tui.widgets.plots import CurvePlot


def folded(field: OptionField) -> bool:
    return any(isinstance(a, Collapsible) and a.collapsed for a in field.ancestors)


async def test_the_pretraining_form_shows_its_essentials_first() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, "pretrain")
        fields = form.options
        shown = [f.field.name for f in fields if not folded(f)]
        assert shown[:3] == ["dataset", "tokenizer", "init_from"]
        assert {"model", "max_steps", "max_tokens"} <= set(shown)
        assert len(shown) <= 12 < len(fields)
        assert all(folded(f) for f in fields if f.field.name in ("beta1", "warmup_steps", "strategy"))
        force = form.query_one("#option-force", OptionField)
        assert force.value is False and "force" not in form.values()


async def test_a_chart_only_where_there_is_a_curve() -> None:
    store = Store()
    add_finished_run(store, "run-260101-00data", "data.prepare", "done", [
        {"type": "started", "attempt": 1, "time": 1.0},
        {"type": "metric", "step": None, "values": {"rows": 120.0}, "time": 2.0},
        {"type": "done", "result": {}, "time": 3.0}])
    add_finished_run(store, "run-260101-00pret", "pretrain", "done", [
        {"type": "started", "attempt": 1, "time": 1.0},
        *({"type": "metric", "step": s, "values": {"loss": 5.0 - s}, "time": 2.0 + s} for s in range(3)),
        {"type": "done", "result": {}, "time": 9.0}], t=5)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-00data")
        await wait_for(pilot, lambda: "rows 120" in screen_text(app), what="the data run")
        assert not app.screen.query_one(CurvePlot).display
        app.screen.dismiss()
        app.open_run("run-260101-00pret")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and "loss 3" in screen_text(app),
                       what="the pretraining run")
        assert app.screen.query_one(CurvePlot).display


async def test_text_cut_to_80_columns_ends_with_an_ellipsis() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "Download a model" in screen_text(app), what="the stages")
        await pilot.pause(0.5)
        lines = screen_text(app).splitlines()
        for _, label in LIFECYCLE:
            row = next(line for line in lines if line.startswith(f"  {label} "))
            assert len(row) <= SIZE[0]
        download = next(line for line in lines if line.startswith("  Download "))
        assert download.endswith("…") and "Hugging Face" not in download



async def test_runs_models_and_chat_cut_at_80_columns_end_with_an_ellipsis() -> None:
    store = Store()
    add_finished_run(store, "run-260101-0class", "finetune.classify", "done", [])
    add_artifact(store, "model-260101-bbbbbb", "model", "a-rather-long-model-name-for-the-lineage-tree")
    add_artifact(store, "gguf-260101-with-an-identifier-long-enough-to-need-cutting-too", "gguf",
                 "a-very-long-gguf-name-that-goes-on-and-on-q4_k_m", parents=("model-260101-bbbbbb",))
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: "run-260101-0class" in screen_text(app), what="the runs")
        row = next(line for line in screen_text(app).splitlines() if "run-260101-0class" in line)
        assert " finetune.clas… " in row, row

        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.selected, what="the tree")
        lines = screen_text(app).splitlines()
        assert "▼ model a-rather-long-model-name-for-t…│" in lines[1], lines[1]
        assert "└── gguf a-very-long-gguf-name-that-go…│" in lines[2], lines[2]

        app.open_chat("gguf-260101-with-an-identifier-long-enough-to-need-cutting-too")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.ready, what="the chat")
        lines = screen_text(app).splitlines()
        assert lines[2].startswith(" a-very-long-gguf-name-that-goes-on… ▼"), lines[2]
        assert lines[3].startswith(" ready · gguf-260101-with-an-identifier-long-enough-to-need-cutting-to")
        assert lines[3].endswith("…"), lines[3]


async def test_a_finished_run_shows_the_tables_the_cli_prints() -> None:
    card = {"title": "Dataset card: alpaca-mini", "columns": ["", "value"],
            "rows": [["rows kept", 10199], ["near duplicates removed", 82]]}
    filters = {"title": "Filters", "columns": ["step", "before", "removed", "after"],
               "rows": [["near-dedup", 10281, 82, 10199]]}
    add_finished_run(Store(), "run-260101-00data", "data.prepare", "done", [
        {"type": "started", "attempt": 1, "time": 1.0},
        {"type": "done", "result": {"tables": [card, filters], "type": "instruction"}, "time": 3.0}])
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-00data")
        await wait_for(pilot, lambda: "Dataset card: alpaca-mini" in screen_text(app), what="the dataset card")
        text = screen_text(app)
        assert "rows kept" in text and "10,199" in text and "Filters" in text  # the rest scrolls
        assert not app.screen.query_one(CurvePlot).display
