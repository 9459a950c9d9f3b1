"""Pipeline view and stage forms, driven with Pilot: stages in lifecycle order, a form made from
a stage's Options that validates as you type, and bad input that never reaches the workspace."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from tests.tui.helpers import SIZE, screen_text, shows, wait_for
from workbench import locations
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.data import LIFECYCLE
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.widgets.option_field import OptionField
from workbench.tui.widgets.tables import StageTable


async def open_form(pilot, stage: str = "counter") -> StageFormScreen:  # type: ignore[no-untyped-def]
    """Highlight the stage's row in the pipeline and press Enter."""
    app = pilot.app
    await wait_for(pilot, lambda: any(e.name == stage and e.loaded for e in app.catalog), what="plugins")
    table = app.screen.query_one(StageTable)
    await wait_for(pilot, lambda: table.row_count > 0, what="the stage table")
    table.move_cursor(row=table.get_row_index(stage))
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, StageFormScreen), what="the form")
    return app.screen  # type: ignore[return-value]


async def set_option(pilot, form: StageFormScreen, name: str, text: str) -> OptionField:  # type: ignore[no-untyped-def]
    field = form.query_one(f"#option-{name}", OptionField)
    control = field.control
    assert isinstance(control, Input)
    control.focus()
    control.value = ""
    await pilot.press(*text)
    await pilot.pause()
    return field


async def test_pipeline_lists_lifecycle_stages_then_plugins(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: shows(app, "counter", "· ready"), what="the counter plugin row")
        lines = screen_text(app).splitlines()
        labels = [label for _, label in LIFECYCLE] + ["counter"]
        rows = [next(i for i, line in enumerate(lines) if line.startswith(f"  {label} ")) for label in labels]
        assert rows == sorted(rows), "stages are not in lifecycle order"
        assert shows(app, "Count with a seeded random walk")
        # The broken third-party plugin is listed, marked, and does not take the view down.
        assert "✘ unavailable" in next(line for line in lines if line.startswith("  broken "))


async def test_form_validates_as_you_type_and_blocks_bad_runs(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        assert shows(app, "counter (counter)", "How many steps to count")
        steps = form.query_one("#option-steps", OptionField)
        assert steps.control.value == "20"  # type: ignore[union-attr]  # the default

        await set_option(pilot, form, "steps", "0")
        assert shows(app, "steps must be at least 1 (got 0)")
        await set_option(pilot, form, "sleep", "soon")
        assert shows(app, "sleep expects number, got 'soon'")

        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: shows(app, "2 options to fix"), what="the form's error")
        assert isinstance(app.screen, StageFormScreen)
        assert not locations.db_path().exists() or Store().list_runs() == []

        await set_option(pilot, form, "steps", "3")
        await set_option(pilot, form, "sleep", "0")
        assert "must be at least" not in screen_text(app) and "expects number" not in screen_text(app)
        assert form.values() == {"steps": "3", "sleep": "0"}  # only what differs from the defaults


async def test_stage_validation_error_is_shown_and_nothing_is_written(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        await set_option(pilot, form, "label", " ")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: shows(app, "label must not be empty") and not shows(app, "--label"), what="the stage's own check")
        assert isinstance(app.screen, StageFormScreen)
        assert not locations.runs_dir().exists() or not any(locations.runs_dir().iterdir())


async def test_escape_goes_back_to_the_pipeline(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await open_form(pilot)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, StageFormScreen), what="the pipeline")
        assert app.current_mode == "pipeline"


async def test_the_pretrain_form_refuses_an_unknown_model_before_a_run_exists(workspace: Path) -> None:
    from textual.widgets import Select

    from tests.stages.test_pretrain_names import register_inputs

    dataset, tokenizer = register_inputs()
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, "pretrain")
        for name, value in (("dataset", dataset), ("tokenizer", tokenizer)):
            control = form.query_one(f"#option-{name}", OptionField).control
            assert isinstance(control, Select)
            control.value = value
        form.query_one("#option-model", OptionField).reveal()
        await set_option(pilot, form, "model", "huge")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "unknown model 'huge'" in str(form.query_one("#form-error").render()),
                       timeout=60, what="the form's error")
        assert app.screen is form
    assert not (workspace / "runs").exists() or not any((workspace / "runs").iterdir())
