"""Arena view, driven with Pilot: two real `workbench chat --jsonl` children run two tiny random
GGUF models in llama.cpp, the answers stream side by side, one key votes, the names show only
after it, and the vote lands in the workspace's SQLite store and on the leaderboard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, SelectionList

from tests.conftest import make_tiny_model
from tests.tui.helpers import notified, screen_text, shows, wait_for
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.arena import ArenaScreen
from workbench.tui.screens.help import HelpScreen
from workbench.tui.screens.pipeline import PipelineScreen

SIZE = (80, 24)
NAMES = ("alpha-q", "beta-q")


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("arena-tui")
    out = []
    for seed, name in enumerate(NAMES):
        path = root / f"{name}.gguf"
        write_gguf(make_tiny_model(root / name, seed=seed), path, "f16")
        out.append(path)
    return out


def register(paths: list[Path]) -> list[str]:
    from workbench.context import Context

    ctx = Context(Store())
    ids = []
    for path, name in zip(paths, NAMES, strict=True):
        staged = ctx.staging_dir("gguf")
        shutil.copy2(path, staged / path.name)
        ids.append(ctx.register("gguf", staged, name=name).id)
    return ids


async def test_a_vote_by_key_hides_then_reveals_the_models_and_is_stored(ggufs):
    ids = register(ggufs)
    app = WorkbenchApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("6")
        await wait_for(pilot, lambda: isinstance(app.screen, ArenaScreen) and len(app.screen.models) == 2,
                       what="the arena's models")
        screen: ArenaScreen = app.screen  # type: ignore[assignment]
        screen.query_one("#arena-models", SelectionList).select_all()

        prompt = screen.query_one("#arena-prompt", Input)
        prompt.focus()
        await pilot.press(*"Say hello", "enter")
        await wait_for(pilot, lambda: screen.voting, timeout=90, what="both answers")
        r = screen.round
        assert r is not None and r.text["left"] and r.text["right"] and r.text["left"] != r.text["right"]
        text = screen_text(app)
        assert "your vote: 1 A is better" in text
        below_roster = text.split("your vote:")[1]  # the list of models taking part names them all, in no order
        assert not any(name in below_roster for name in NAMES), text
        assert "╭─ A ───" in text and "╭─ B ───" in text, text  # the panes are titled A and B, nothing more

        await pilot.press("question_mark")  # the help lists the vote keys while a vote is due
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        keys = dict(app.screen.rows)  # type: ignore[attr-defined]
        assert keys["1"] == "A is better: Vote for the left answer" and keys["b"].startswith("Both bad")
        assert shows(app, "A is better: Vote for")
        await pilot.press("escape")

        left, right = r.left, r.right
        await pilot.press("1")  # a vote, not the Pipeline view
        await wait_for(pilot, lambda: shows(app, "A is better · A was"), what="the reveal")
        names = dict(zip(ids, NAMES, strict=True))
        assert shows(app, f"A was {names[left]} · B was {names[right]}", f"╭─ A · {names[left]} ({left}) ─",
                     f"╭─ B · {names[right]} ({right}) ─")
        assert isinstance(app.screen, ArenaScreen) and prompt.has_focus
        # The heading is drawn before the ratings (computed on a worker) fill the rows under it.
        await wait_for(pilot, lambda: all(n in screen_text(app).partition("leaderboard (human votes)")[2]
                                          for n in NAMES), what="the leaderboard's rows")
        board = screen_text(app).split("leaderboard (human votes)")[1]
        assert board.index(NAMES[ids.index(left)]) < board.index(NAMES[ids.index(right)])  # the winner first
        assert "1 / 0 / 0" in board and "0 / 0 / 1" in board

        [vote] = Store().list_votes()
        assert (vote["model_left"], vote["model_right"], vote["vote"], vote["voter"]) == (left, right, "left", "human")
        assert vote["prompt"] == "Say hello" and vote["answer_left"] == r.text["left"]
        assert not notified(app, "failed")

        # With no vote due, 1 is the Pipeline view's key again.
        screen.query_one("#arena-a").focus()
        await pilot.press("1")
        await wait_for(pilot, lambda: isinstance(app.screen, PipelineScreen), what="the Pipeline view")
