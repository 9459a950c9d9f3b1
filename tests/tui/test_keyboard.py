"""The keyboard alone: typing stays in the field it is typed in, errors keep the cursor on the
field they name, and help lists the keys of the view."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from tests.tui.helpers import SIZE, shows, wait_for
from tests.tui.test_pipeline import open_form, set_option
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.widgets.option_field import OptionField


async def test_typing_in_a_form_stays_in_the_field(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        steps = form.query_one("#option-steps", OptionField).control
        assert isinstance(steps, Input)
        steps.focus()
        await pilot.pause()
        await pilot.press("2", "5")
        # Focus does not select the default, so the keys go after it instead of replacing it.
        assert steps.value == "2025"
        assert app.current_mode == "pipeline" and isinstance(app.screen, StageFormScreen)


async def test_digits_on_a_button_do_not_leave_the_form(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        form.query_one("#run").focus()
        await pilot.pause()
        await pilot.press("2")
        await pilot.pause()
        assert app.current_mode == "pipeline" and isinstance(app.screen, StageFormScreen)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, StageFormScreen), what="the pipeline")
        await pilot.press("2")
        await wait_for(pilot, lambda: app.current_mode == "runs", what="the Runs view outside the form")


async def test_a_failed_run_keeps_the_cursor_on_the_field_it_names(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        label = await set_option(pilot, form, "label", " ")
        steps = form.query_one("#option-steps", OptionField).control
        steps.focus()
        await pilot.press("ctrl+r")
        # The stage's own check names the field in the form's words, and the cursor goes there.
        await wait_for(pilot, lambda: shows(app, "label must not be empty"), what="the stage's check")
        assert app.focused is label.control
        await pilot.press("x")
        assert label.control.value == " x"  # type: ignore[union-attr]
        assert steps.value == "20"  # type: ignore[union-attr]
