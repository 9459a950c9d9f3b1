"""The keyboard alone: typing stays in the field it is typed in, errors keep the cursor on the
field they name, and help lists the keys of the view."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Input

from tests.tui.helpers import FAKE_CHAT, SIZE, shows, wait_for
from tests.tui.test_pipeline import open_form, set_option
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.chat import ChatScreen
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.screens.help import HelpScreen
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


def help_rows(app: WorkbenchApp) -> dict[str, str]:
    table = app.screen.query_one("#help-keys", DataTable)
    return {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}


async def test_question_mark_lists_the_keys_of_the_view(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: shows(app, "Pipeline"), what="the first frame")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
        rows = help_rows(app)
        assert "Select model" in rows["s"] and "Runs" in rows["2"] and "Theme" in rows["^t"]
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen), what="help to close")

        # In a form, F1 works where `?` is text, and lists the form's own keys.
        form = await open_form(pilot)
        form.query_one("#option-label", OptionField).control.focus()
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the form's help")
        rows = help_rows(app)
        assert "Run" in rows["^r"] and "Back" in rows["esc"]
        assert "2" not in rows  # digits do not switch views from a form


async def test_the_palette_finds_help(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: shows(app, "Pipeline"), what="the first frame")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"keys")
        await wait_for(pilot, lambda: shows(app, "Help: keys of this view"), what="the palette's match")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
        assert "Select model" in help_rows(app)["s"]


async def test_escape_in_chat_lets_the_view_keys_work() -> None:
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat view")
        assert isinstance(app.focused, Input)
        await pilot.press("escape")
        assert not isinstance(app.focused, Input)
        await pilot.press("escape")
        assert app.focused is app.screen.query_one("#prompt")
        await pilot.press("escape", "2")
        await wait_for(pilot, lambda: app.current_mode == "runs", what="the Runs view")
