"""A newcomer is guided: stages say what they still need, forms offer only what fits (and fill
in the only choice), messages name form fields, and a finished run points to the next stage."""

from __future__ import annotations

from textual.widgets import Select

from tests.tui.helpers import (
    SIZE,
    add_artifact,
    add_finished_run,
    lineage_workspace,
    screen_text,
    shows,
    wait_for,
)
from tests.tui.test_pipeline import open_form, set_option
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.screens.runs import RunMonitorScreen
from workbench.tui.widgets.option_field import OptionField
from workbench.tui.widgets.tables import StageTable


def row(app: WorkbenchApp, label: str) -> str:
    return next((line for line in screen_text(app).splitlines() if line.startswith(f"  {label} ")), "")


async def test_an_empty_workspace_says_what_each_stage_still_needs() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: shows(app, "Finetune LoRA", "blocked"), what="the stage states")
        assert "· ready" in row(app, "Data") and "· ready" in row(app, "Download")
        assert "blocked" in row(app, "Pretrain") and "blocked" in row(app, "Finetune LoRA")
        assert "blocked" in row(app, "Chat")
        table = app.screen.query_one(StageTable)
        table.move_cursor(row=table.get_row_index("finetune.lora"))
        await wait_for(pilot, lambda: shows(app, "blocked: needs a model (model), an instruction dataset"),
                       what="the reason")


async def test_forms_offer_only_what_fits_and_fill_the_only_choice() -> None:
    store = lineage_workspace()  # one instruction dataset, three models
    add_artifact(store, "dataset-260101-999999", "dataset", "corpus", t=7, metadata={"type": "pretrain"})
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, "finetune.lora")
        dataset = form.query_one("#option-dataset", OptionField).control
        assert isinstance(dataset, Select)
        offered = [value for _, value in dataset._options if value is not Select.NULL]
        assert offered == ["dataset-260101-aaaaaa"]  # the pretraining corpus is not offered
        assert dataset.value == "dataset-260101-aaaaaa"  # and the only choice is taken
        model = form.query_one("#option-model", OptionField).control
        assert isinstance(model, Select) and model.value is Select.NULL  # two models: the user chooses


async def test_errors_name_the_field_not_the_flag(with_plugin: object) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        await set_option(pilot, form, "checkpoint_every", "0")
        assert shows(app, "checkpoint_every must be at least 1 (got 0)")
        assert "--checkpoint-every" not in screen_text(app)


async def test_a_finished_run_points_to_the_next_stage() -> None:
    store = Store()
    add_finished_run(store, "run-260101-00data", "data.prepare", "done", [
        {"type": "started", "attempt": 1, "time": 1.0},
        {"type": "artifact", "id": "dataset-260101-999999", "kind": "dataset", "name": "corpus", "time": 2.0},
        {"type": "done", "result": {"dataset": "dataset-260101-999999", "type": "pretrain"}, "time": 3.0},
    ])
    add_artifact(store, "dataset-260101-999999", "dataset", "corpus", metadata={"type": "pretrain"},
                 run_id="run-260101-00data")
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any(e.name == "tokenizer.train" and e.loaded for e in app.catalog),
                       what="the stages")
        app.open_run("run-260101-00data")
        await wait_for(pilot, lambda: shows(app, "next: Tokenizer", "press n"), what="the suggestion")
        assert isinstance(app.screen, RunMonitorScreen)
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, StageFormScreen), what="the tokenizer's form")
        assert app.screen.entry.name == "tokenizer.train"  # type: ignore[attr-defined]
        dataset = app.screen.query_one("#option-dataset", OptionField)
        assert dataset.value == "dataset-260101-999999"
