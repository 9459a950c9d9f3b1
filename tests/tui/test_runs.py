"""Runs from the TUI are real worker processes running the third-party `counter` stage: a run
started from its form completes with its progress on screen, cancel stops it with a
checkpoint, resume finishes it with the same result, and runs outlive the app."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import ProgressBar

from tests.tui.helpers import SIZE, T0, add_finished_run, notified, screen_text, shows, wait_for
from tests.tui.test_pipeline import open_form, set_option
from workbench import runs
from workbench.events import read_events
from workbench.store import Run, Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.runstate import RunState
from workbench.tui.screens.runs import RunMonitorScreen, RunsScreen
from workbench.tui.widgets.plots import CurvePlot


def expected_total(steps: int, seed: int = 0) -> float:
    rng = random.Random(seed)
    return sum(rng.random() for _ in range(steps))


def monitor_state(app: WorkbenchApp) -> RunState:
    screen = app.screen
    assert isinstance(screen, RunMonitorScreen), f"expected the run monitor, got {screen}"
    return screen.state


async def test_run_started_from_the_form_completes_and_shows_progress(
        with_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []  # every progress line the monitor put on screen, in order
    apply = RunMonitorScreen._apply

    def recording(screen: RunMonitorScreen, *args: Any) -> None:
        apply(screen, *args)
        shown.append(screen.state.progress_text())

    monkeypatch.setattr(RunMonitorScreen, "_apply", recording)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        await set_option(pilot, form, "steps", "12")
        await set_option(pilot, form, "sleep", "0.25")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="the monitor")
        assert app.current_mode == "runs"
        await wait_for(pilot, lambda: monitor_state(app).status == "done", what="the run to finish")
        # Progress showed while it ran, with an ETA, not only at the end.
        assert any("/12 step" in line and "ETA" in line and not line.startswith("12/") for line in shown), shown
        assert shows(app, "12/12 step", "· done", "total")
        bar = app.screen.query_one(ProgressBar)
        assert bar.total == 12 and bar.progress == 12
        assert app.screen.query_one(CurvePlot)._series["total"][-1][0] == 12.0
        run_id = app.screen.run_id  # type: ignore[attr-defined]

    store = Store()
    assert runs.get(run_id, store).status == "done"
    [art] = [a for a in store.list_artifacts("counter") if a.run_id == run_id]
    assert abs(art.metrics["total"] - expected_total(12)) < 1e-9


@pytest.mark.slow  # twelve seconds of counting, so the cancel lands mid-run even on a busy machine
async def test_cancel_then_resume_matches_an_uninterrupted_run(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form = await open_form(pilot)
        await set_option(pilot, form, "steps", "30")
        await set_option(pilot, form, "sleep", "0.4")
        await set_option(pilot, form, "checkpoint_every", "2")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="the monitor")
        await wait_for(pilot, lambda: (monitor_state(app).step or 0) >= 2, what="a few steps")
        await pilot.press("c", "y")  # cancel, and yes, stop it
        await wait_for(pilot, lambda: monitor_state(app).status == "cancelled", what="the run to stop")
        run_id = app.screen.run_id  # type: ignore[attr-defined]
        stopped_at = monitor_state(app).step or 0
        assert stopped_at < 30 and shows(app, "· cancelled")
        run = runs.get(run_id, Store())
        assert run.status == "cancelled" and run.checkpoint

        await pilot.press("r")
        await wait_for(pilot, lambda: monitor_state(app).attempt == 2, what="the resumed attempt")
        await wait_for(pilot, lambda: monitor_state(app).status == "done", what="the resumed run to finish")
        assert shows(app, "30/30 step", "attempt 2")
        assert any("resuming from" in line for line in monitor_state(app).logs)

    store = Store()
    [art] = [a for a in store.list_artifacts("counter") if a.run_id == run_id]
    assert abs(art.metrics["total"] - expected_total(30)) < 1e-9


async def test_runs_outlive_the_app_and_reappear_live(with_plugin: Path) -> None:
    store = Store()
    run, proc = runs.start("counter", {"steps": 400, "sleep": 0.05}, store)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and shows(app, run.id, "running"),
                       what="the run in the list")
        await wait_for(pilot, lambda: shows(app, "● 1 running"), what="the live-run count")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="the monitor")
        first = await _step(pilot, app)
        second = await _step(pilot, app, after=first)
        assert second > first  # live, not a snapshot of the file
    # The app is gone; the worker is not: it keeps counting.
    closed_at = _last_step(run)
    time.sleep(1.0)
    assert runs.get(run.id, store).status == "running" and _last_step(run) > closed_at
    runs.cancel(run.id, store)
    proc.wait(timeout=60)
    assert runs.get(run.id, store).status == "cancelled"


def _last_step(run: Run) -> int:
    steps = [e["step"] for e in read_events(run.run_dir / "events.jsonl") if e["type"] == "progress"]
    return steps[-1] if steps else 0


async def _step(pilot, app: WorkbenchApp, after: int = 0) -> int:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        step = monitor_state(app).step or 0
        if step > after:
            return step
        await pilot.pause(0.1)
    raise AssertionError(f"no step after {after}:\n{screen_text(app)}")


async def test_a_killed_worker_shows_as_failed(with_plugin: Path) -> None:
    store = Store()
    run, proc = runs.start("counter", {"steps": 500, "sleep": 0.05}, store)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run(run.id)
        await wait_for(pilot, lambda: (monitor_state(app).step or 0) > 0, what="the run to start")
        proc.kill()
        proc.wait()
        await wait_for(pilot, lambda: monitor_state(app).status == "failed", what="the failure")
        assert shows(app, "exited without finishing")


async def test_follow_mode_opens_each_new_run_and_says_how_the_job_ended(with_plugin: Path) -> None:
    """What `workbench demo --tui` shows: each step's run as it starts, then how the demo ended."""
    from workbench.tui.app import BackgroundJob

    job = {"running": True}
    app = WorkbenchApp(follow_runs=True, job=BackgroundJob(
        "demo", lambda: job["running"], lambda: "report: /workspace/demo/report.md"))
    store = Store()
    async with app.run_test(size=SIZE) as pilot:
        assert app.current_mode == "runs"  # the first view is the Runs view
        await wait_for(pilot, lambda: app._seen is not None, what="the first look at the workspace")
        first, _ = runs.start("counter", {"steps": 3, "sleep": 0.05}, store)
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and app.screen.run_id == first.id,
                       what="the first run's monitor")
        await wait_for(pilot, lambda: monitor_state(app).status == "done", what="the first run to finish")

        second, _ = runs.start("counter", {"steps": 40, "sleep": 0.05, "seed": 1}, store)
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and app.screen.run_id == second.id,
                       what="the second run's monitor")
        assert sum(isinstance(s, RunMonitorScreen) for s in app.screen_stack) == 1  # replaced, not stacked
        await wait_for(pilot, lambda: monitor_state(app).status == "done", what="the second run to finish")

        job["running"] = False
        await wait_for(pilot, lambda: notified(app, "demo finished", "report: /workspace/demo/report.md"),
                       what="the job's outcome")

        # Elsewhere in the app, a new run is announced by its end but never pulls the user away.
        await pilot.press("3")
        third, _ = runs.start("counter", {"steps": 2}, store)
        await wait_for(pilot, lambda: notified(app, f"counter run {third.id} done"), what="the third run's end")
        assert app.current_mode == "models"


async def test_a_finished_runs_bar_is_full_and_a_run_without_progress_has_none(utc: None) -> None:
    """Data and tokenizer runs count rows and documents, some phases without a known total and
    the last one possibly empty (a validation split of no documents)."""
    store = Store()
    started = {"type": "started", "time": T0, "attempt": 1, "pid": 1}
    done = {"type": "done", "time": T0 + 2, "result": {}}
    add_finished_run(store, "run-260101-0count", "data.prepare", "done", [
        started,
        {"type": "progress", "time": T0, "step": 0, "total": 40, "unit": "row", "desc": "checking rows"},
        {"type": "progress", "time": T0 + 1, "step": 40, "total": None, "unit": "row", "desc": "reading"},
        {"type": "metric", "time": T0 + 1, "step": None, "values": {"rows": 40}}, done])
    add_finished_run(store, "run-260101-00none", "tokenizer.train", "done", [
        started, {"type": "metric", "time": T0 + 1, "step": None, "values": {"vocab_size": 300}}, done])
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        app.open_run("run-260101-0count")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and app.screen.state.status == "done",
                       what="the monitor")
        bar = app.screen.query_one(ProgressBar)
        assert bar.display and bar.percentage == 1.0, screen_text(app)
        assert shows(app, "100%", "40 row")

        app.open_run("run-260101-00none")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen) and app.screen.state.status == "done"
                       and app.screen.run_id == "run-260101-00none", what="the second monitor")
        assert not app.screen.query_one(ProgressBar).display
        text = screen_text(app)
        assert "--%" not in text and "━" not in text, text
