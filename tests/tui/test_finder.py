"""The download form's Hub search, driven with Pilot against the local Hub look-alike: matches
show their size and licence, choosing one fills the repository option, and offline mode says why
instead of searching."""

from __future__ import annotations

from collections.abc import Iterator

import huggingface_hub.constants
import pytest
from textual.widgets import Input

from tests.hubserver import HubServer
from tests.tui.helpers import SIZE, shows, wait_for
from tests.tui.test_pipeline import open_form
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.finder import FinderScreen
from workbench.tui.screens.form import StageFormScreen
from workbench.tui.widgets.option_field import OptionField
from workbench.tui.widgets.tables import FinderTable


@pytest.fixture
def small_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """Three repositories with made-up files; the search reads only their listing."""
    with HubServer() as server:
        server.add_repo("tiny/llama", {"config.json": "{}", "model.safetensors": b"w" * 3 * 1024 * 1024},
                        license="apache-2.0", downloads=1200, likes=7)
        server.add_repo("tiny/llama-gguf", {"tiny-Q4_K_M.gguf": b"g" * 2048}, license="mit", downloads=500)
        server.add_repo("other/model", {"config.json": "{}"}, downloads=9000)
        # The UI process reads the Hub settings once, when it first searches; point them here.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


async def open_finder(pilot) -> tuple[StageFormScreen, FinderScreen]:  # type: ignore[no-untyped-def]
    form = await open_form(pilot, "download")
    await pilot.press("ctrl+f")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, FinderScreen), what="the finder")
    return form, pilot.app.screen


async def test_hub_search_shows_size_and_licence_and_fills_the_repository(small_hub: HubServer) -> None:
    app = WorkbenchApp()
    async with app.run_test(size=(100, 30)) as pilot:
        form, finder = await open_finder(pilot)
        await pilot.press(*"llama", "enter")
        table = finder.query_one(FinderTable)
        await wait_for(pilot, lambda: table.row_count == 2, what="the matches")
        assert shows(app, "2 matches for 'llama'")
        assert shows(app, "tiny/llama ", "1.2k", "3.0 MiB", "apache-2.0")  # most downloaded first
        assert shows(app, "tiny/llama-gguf", "mit", "yes")  # ships GGUF files
        assert not shows(app, "other/model")

        await pilot.press("down", "enter")  # the second match
        await wait_for(pilot, lambda: app.screen is form, what="the form again")
        field = form.query_one("#option-repo_id", OptionField)
        assert field.value == "tiny/llama-gguf" and field.error is None
        assert app.focused is field.control


async def test_offline_search_says_so_and_leaves_the_form_as_it_was(small_hub: HubServer,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        form, _ = await open_finder(pilot)
        await pilot.press(*"llama", "enter")
        await wait_for(pilot, lambda: shows(app, "searching the Hub needs the network"), what="the refusal")
        assert not small_hub.log  # nothing was asked of the Hub
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is form, what="the form again")
        assert form.query_one("#option-repo_id", OptionField).control.value == ""
        assert isinstance(form.query_one("#input-repo_id"), Input)
