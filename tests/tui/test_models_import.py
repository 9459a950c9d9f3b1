"""Models view → Import…: the import stage's form asks for the path (and name, base), the run
shows in the Runs view like any other, and the imported model appears in the lineage tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_tiny_model
from tests.stages.conftest import tiny_gguf
from tests.tui.helpers import SIZE, screen_text, shows, wait_for
from tests.tui.test_pipeline import set_option
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.screens.models import ModelsScreen
from workbench.tui.screens.runs import RunMonitorScreen


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return tiny_gguf(make_tiny_model(tmp_path / "tiny"), tmp_path / "tiny-on-disk.gguf")


async def test_import_from_the_models_view_runs_and_shows_the_new_model(gguf_file: Path) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models view")
        assert shows(app, "Import…")  # in the footer
        await wait_for(pilot, lambda: any(e.name == "import" and e.loaded for e in app.catalog), what="plugins")
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, StageFormScreen), what="the import form")
        form = app.screen
        assert {"option-path", "option-name", "option-base"} <= {w.id for w in form.query(".option")}
        await set_option(pilot, form, "path", str(gguf_file))
        await set_option(pilot, form, "name", "from-disk")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, RunMonitorScreen), what="the run monitor")
        monitor = app.screen
        await wait_for(pilot, lambda: monitor.state.status == "done", timeout=60, what="the import to finish")
        assert shows(app, "· done")

        await pilot.press("3")
        await wait_for(pilot, lambda: "gguf from-disk" in screen_text(app), what="the imported model")
    [art] = Store().list_artifacts("gguf")
    assert art.name == "from-disk" and art.metadata["source"]["path"] == str(gguf_file)


async def test_a_bad_path_is_said_in_the_form_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: any(e.name == "import" and e.loaded for e in app.catalog), what="plugins")
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, StageFormScreen), what="the import form")
        await set_option(pilot, app.screen, "path", str(tmp_path / "empty"))
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: shows(app, "empty is not a", "*.gguf found"), what="the error")
        assert isinstance(app.screen, StageFormScreen)
    assert Store().list_runs() == []


async def test_import_is_a_palette_command_of_the_models_view() -> None:
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models view")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Import…" in titles
