"""Run control a newcomer can trust: the monitor follows a resumed run's live state, cancel asks
first, and a run that just started takes the Runs list's cursor. Runs are real `counter`
workers, or runs left in the workspace as a worker would leave them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tui.helpers import SIZE, add_finished_run, shows, wait_for
from tests.tui.test_runs import monitor_state
from workbench import locations, runs
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.confirm import ConfirmScreen
from workbench.tui.screens.runs import RunMonitorScreen, RunsScreen


def started(attempt: int, t: float) -> dict[str, object]:
    return {"type": "started", "attempt": attempt, "time": t}


def progress(step: int, t: float) -> dict[str, object]:
    return {"type": "progress", "step": step, "total": 10, "time": t}


async def test_a_resumed_run_shows_its_live_state_before_the_store_catches_up(with_plugin: Path) -> None:
    store = Store()
    add_finished_run(store, "run-260101-000001", "counter", "cancelled",
                     [started(1, 1.0), progress(2, 2.0),
                      {"type": "checkpoint", "path": "step-000002.json", "step": 2, "time": 2.5},
                      {"type": "cancelled", "time": 3.0}])
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-000001")
        await wait_for(pilot, lambda: shows(app, "· cancelled", "Resume"), what="the cancelled run")
        # The second attempt writes its first events while the store still holds the first attempt's end.
        events = locations.run_dir("run-260101-000001") / "events.jsonl"
        with events.open("a") as f:
            f.write(json.dumps(started(2, 4.0)) + "\n" + json.dumps(progress(3, 5.0)) + "\n")
        await wait_for(pilot, lambda: monitor_state(app).step == 3, what="the resumed attempt's step")
        await pilot.pause(1.5)  # past the monitor's next look at the store
        assert monitor_state(app).status == "running"
        assert shows(app, "· running · attempt 2") and not shows(app, "Resume")


async def test_cancel_asks_first(with_plugin: Path) -> None:
    store = Store()
    run, proc = runs.start("counter", {"steps": 100_000, "sleep": 0.05}, store)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run.id)
        await wait_for(pilot, lambda: (monitor_state(app).step or 0) > 0, what="the run to start")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        assert shows(app, f"Stop run {run.id}")
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="the monitor")
        await pilot.pause(1.0)
        assert runs.get(run.id, store).status == "running"
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await wait_for(pilot, lambda: monitor_state(app).status == "cancelled", what="the run to stop")
    proc.wait(timeout=60)


async def test_a_new_run_takes_the_cursor(with_plugin: Path) -> None:
    store = Store()
    add_finished_run(store, "run-260101-000001", "counter", "done", [])
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.runs, what="the old run")
        new, proc = runs.start("counter", {"steps": 2}, store)
        await wait_for(pilot, lambda: shows(app, new.id), what="the new run in the list")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="a monitor")
        assert app.screen.run_id == new.id  # type: ignore[attr-defined]
    proc.wait(timeout=60)
