"""What a second newcomer run found: a three-state option sends what the CLI would, checkboxes
say what they hold, a live run wins over an older failure, Esc leaves a monitor for the list,
and Screenshot saves where it says."""

from __future__ import annotations

from textual.widgets import Checkbox, Select

from tests.tui.helpers import SIZE
from tests.tui.test_pipeline import open_form
from workbench.tui.app import WorkbenchApp
from workbench.tui.widgets.option_field import OptionField


async def test_an_auto_option_is_left_to_the_stage_like_the_cli_does() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, "data.prepare")
        near_dedup = form.query_one("#option-near_dedup", OptionField)
        assert near_dedup.field.default is None
        control = near_dedup.control
        assert isinstance(control, Select) and "auto" in str(control.prompt)
        assert "near_dedup" not in form.values()  # the CLI without --near-dedup/--no-near-dedup
        control.value = False
        await pilot.pause()
        assert form.values()["near_dedup"] is False


async def test_a_checkbox_says_what_it_holds() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot, "pretrain")
        force = form.query_one("#option-force", OptionField).control
        assert isinstance(force, Checkbox) and not force.value
        assert str(force.label) == "off"
        form.query_one("#option-force", OptionField).reveal()
        await pilot.press("space")
        assert force.value and str(force.label) == "on"
