"""The app as a whole: no torch in the UI process, the command palette reaches every action,
themes switch, and the Doctor view reports what `workbench doctor` finds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tui.helpers import SIZE, shows, wait_for
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.doctor import DoctorScreen, report_rows
from workbench.tui.screens.models import ModelsScreen
from workbench.tui.screens.pipeline import PipelineScreen

HEAVY = ("torch", "litgpt", "llama_cpp", "lightning")

VISIT_EVERY_VIEW = textwrap.dedent("""
    import asyncio, json, sys
    from workbench.tui.app import WorkbenchApp

    async def main():
        app = WorkbenchApp(doctor_command=[sys.executable, "-c", "print('{}')"])
        async with app.run_test(size=(80, 24)) as pilot:
            for key in "1234567":
                await pilot.press(key)
                await pilot.pause(0.3)
            while not any(e.loaded for e in app.catalog if e.name == "counter"):
                await pilot.pause(0.1)
            await pilot.press("1", "ctrl+p")
            await pilot.pause(0.3)
    asyncio.run(main())
    print(json.dumps(sorted(m for m in sys.argv[1:] if m in sys.modules)))
""")


def test_the_ui_process_never_imports_torch(with_plugin: Path) -> None:
    """Every view opened, every plugin loaded, the palette shown: still no model library."""
    out = subprocess.run([sys.executable, "-c", VISIT_EVERY_VIEW, *HEAVY], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


async def test_every_action_is_in_the_command_palette(with_plugin: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: any(e.name == "counter" and e.loaded for e in app.catalog), what="plugins")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Go to Pipeline", "Go to Runs", "Go to Models", "Go to Chat", "Go to Doctor",
                      "Toggle light/dark theme", "Select model", "Open", "Run stage: counter", "Quit"):
            assert title in titles, f"{title!r} missing from the palette: {titles}"

        # Use it the way a person does: open it, type, press Enter.
        await pilot.press("ctrl+p")
        await pilot.pause(0.3)
        await pilot.press(*"Go to Models", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models view")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Details/Compare", "Chat", "Delete"} <= set(titles)


async def test_theme_toggles_between_light_and_dark() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        assert app.theme == "textual-dark"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light" and not app.current_theme.dark
        await pilot.press("ctrl+t")
        assert app.theme == "textual-dark"


async def test_navigation_bar_is_clickable() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, PipelineScreen)
        await pilot.click("#nav-views", offset=(38, 0))  # " 3 Models "
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="a click to open Models")


@pytest.mark.slow  # the real `workbench doctor` imports torch and llama_cpp in its child
@pytest.mark.timeout(120)
async def test_doctor_view_shows_what_workbench_doctor_reports() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await wait_for(pilot, lambda: isinstance(app.screen, DoctorScreen) and shows(app, "this machine:"),
                       timeout=90, what="the doctor's report")
        assert shows(app, "torch", "precision", "python", "llama_cpp")


async def test_doctor_failure_is_reported() -> None:
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no luck here\\n'); sys.exit(3)"]
    app = WorkbenchApp(doctor_command=failing)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("5")
        await wait_for(pilot, lambda: shows(app, "`workbench doctor` failed: no luck here"), what="the failure")


def test_doctor_rows_keep_the_cli_order() -> None:
    report = {"python": "3.11", "torch": {"device": "cpu"}, "plugins": {"counter": "ok"},
              "packages": {"textual": "8"}, "extra": {"x": 1}}
    assert report_rows(report) == [
        ("system", "python", "3.11"), ("torch", "device", "cpu"), ("packages", "textual", "8"),
        ("plugins", "counter", "ok"), ("extra", "x", "1")]
