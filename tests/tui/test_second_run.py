"""What a second newcomer run found: a three-state option sends what the CLI would, checkboxes
say what they hold, a live run wins over an older failure, Esc leaves a monitor for the list,
and Screenshot saves where it says."""

from __future__ import annotations

from textual.widgets import Checkbox, Select

from tests.tui.helpers import SIZE, add_finished_run, notified, screen_text, shows, wait_for
from tests.tui.test_pipeline import open_form
from workbench import locations
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.runs import RunMonitorScreen, RunsScreen
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


async def test_a_live_run_wins_over_a_newer_failure() -> None:
    store = Store()
    add_finished_run(store, "run-260101-0000old", "data.prepare", "running", [], t=0)
    add_finished_run(store, "run-260101-0000new", "data.prepare", "failed", [], t=5)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any(line.startswith("  Data ") and "running" in line
                                          for line in screen_text(app).splitlines()), what="Data running")


async def test_escape_from_a_monitor_goes_back_to_the_list() -> None:
    store = Store()
    add_finished_run(store, "run-260101-000001", "data.prepare", "done", [], t=0)
    add_finished_run(store, "run-260101-000002", "data.prepare", "done", [], t=5)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-000001")
        await pilot.pause()
        app.open_run("run-260101-000002")
        await wait_for(pilot, lambda: shows(app, "run-260101-000002 · data.prepare"), what="the second monitor")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="the run list")
        assert not any(isinstance(s, RunMonitorScreen) for s in app.screen_stack)


async def test_the_palette_screenshot_is_saved_in_the_workspace() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: shows(app, "Pipeline"), what="the first frame")
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"screenshot")
        await wait_for(pilot, lambda: shows(app, "workspace's screenshots folder"), what="the command")
        await pilot.press("enter")
        folder = locations.home() / "screenshots"
        await wait_for(pilot, lambda: notified(app, "Screenshot saved", str(folder)), what="the notice")
        [svg] = folder.glob("*.svg")
        assert "<svg" in svg.read_text()[:200]


async def test_a_run_that_failed_before_any_checkpoint_offers_no_resume(with_plugin: object) -> None:
    store = Store()
    add_finished_run(store, "run-260101-000001", "counter", "failed", [
        {"type": "started", "attempt": 1, "time": 1.0},
        {"type": "failed", "error": "unknown model preset 'huge'", "time": 2.0}])
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-000001")
        await wait_for(pilot, lambda: shows(app, "unknown model preset 'huge'"), what="the failure")
        await pilot.pause(0.5)
        assert not shows(app, "Resume")
