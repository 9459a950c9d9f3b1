"""Chat view, driven with Pilot. The chat child process is mostly `fake_chat.py`, a test double
that speaks the `workbench chat --jsonl` protocol without a model (the real command is tested by
the chat plugin's own tests); everything on this side of the pipe is the real screen. The message
sent while the model loads goes to the real `workbench chat` running a tiny GGUF in llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Select

from tests.conftest import make_tiny_model
from tests.tui.helpers import (
    FAKE_CHAT,
    SIZE,
    add_artifact,
    lineage_workspace,
    screen_text,
    shows,
    wait_for,
)
from workbench import locations
from workbench.store import Store
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.chat import ChatScreen, Turn
from workbench.tui.screens.models import ModelsScreen


async def open_chat(pilot, model_id: str) -> ChatScreen:  # type: ignore[no-untyped-def]
    app = pilot.app
    await pilot.press("4")
    await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.models, what="models")
    screen: ChatScreen = app.screen  # type: ignore[assignment]
    screen.query_one("#chat-model", Select).value = model_id
    return screen


async def say(pilot, screen: ChatScreen, text: str) -> None:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: screen.ready and not screen.busy, what="the chat to be ready")
    prompt = screen.query_one("#prompt", Input)
    prompt.focus()
    await pilot.press(*text, "enter")
    await wait_for(pilot, lambda: not screen.busy, what="the reply")


async def test_replies_stream_with_speed_and_history_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    lineage_workspace()
    pieces: list[str] = []
    append = Turn.append

    def counting(turn: Turn, piece: str) -> None:
        pieces.append(piece)
        append(turn, piece)

    monkeypatch.setattr(Turn, "append", counting)
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, "gguf-260101-eeeeee")
        await wait_for(pilot, lambda: shows(app, "ready · gguf-260101-eeeeee · context 256"), what="ready")
        await say(pilot, screen, "hello there")
        assert shows(app, "you: hello there", "model: echo: hello there (turn 1)")
        assert pieces == ["echo:", " hello", " there", " (turn 1)"]  # streamed piece by piece
        assert shows(app, "4 tokens · 123.4 tok/s · first token 0.05 s")

        await say(pilot, screen, "again")
        assert shows(app, "echo: again (turn 2)", "you: hello there")  # the child kept the history

        await say(pilot, screen, "third")
        await wait_for(pilot, lambda: shows(app, "context trimmed to fit 256 tokens"),
                       what="the notice")  # notices are shown in place

        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: shows(app, "new conversation"), what="the reset")
        assert not shows(app, "you: hello there")
        await say(pilot, screen, "fresh")
        assert shows(app, "echo: fresh (turn 1)")


async def test_system_prompt_is_sent_with_the_message() -> None:
    lineage_workspace()
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, "model-260101-bbbbbb")
        screen.query_one("#chat-system", Input).value = "be brief"
        await say(pilot, screen, "hi")
        assert shows(app, "model: [be brief] echo: hi (turn 1)")


async def test_a_chat_process_that_dies_says_why() -> None:
    add_artifact(Store(), "missing-model", "gguf", "gone")
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        await open_chat(pilot, "missing-model")
        await wait_for(pilot, lambda: shows(app, "chat process ended: error: no model 'missing-model'"),
                       what="the child's error")


async def test_chat_opens_from_the_models_view_with_that_model() -> None:
    lineage_workspace()
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.artifacts)
        models: Any = app.screen
        tree = models.query_one("#lineage")
        tree.cursor_line = next(n for n in range(tree.last_line + 1)
                                if tree.get_node_at_line(n).data == "gguf-260101-eeeeee")
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat view")
        await wait_for(pilot, lambda: shows(app, "ready · gguf-260101-eeeeee"), what="the chat to start")


async def test_a_stored_conversation_is_continued_or_deleted_from_the_history() -> None:
    from workbench.tui.screens.confirm import ConfirmScreen
    from workbench.tui.screens.conversations import ConversationsScreen
    from workbench.tui.widgets.tables import ConversationTable

    store = lineage_workspace()
    old = store.add_conversation("what is a tokenizer", "gguf-260101-eeeeee", system_prompt="be brief")
    store.add_message(old, "user", "what is a tokenizer")
    store.add_message(old, "assistant", "it splits text into tokens")
    newer = store.add_conversation("hello", "model-260101-bbbbbb")
    store.add_message(newer, "user", "hello")
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="the chat view")
        screen: ChatScreen = app.screen  # type: ignore[assignment]
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, ConversationsScreen)
                       and app.screen.query_one(ConversationTable).row_count == 2, what="the stored conversations")
        assert shows(app, "2 conversations, newest first", "what is a tokenizer", "gguf-260101-eeeeee")

        # Delete asks first; the newer conversation goes, the older stays.
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        history = app.screen
        await wait_for(pilot, lambda: history.query_one(ConversationTable).row_count == 1, what="the deletion")
        assert [c["id"] for c in Store().list_conversations()] == [old]

        await pilot.press("enter")  # continue the one that is left
        await wait_for(pilot, lambda: app.screen is screen and screen.ready, what="the resumed chat")
        assert shows(app, f"continuing {old} (2 messages)", "you: what is a tokenizer",
                     "model: it splits text into tokens")
        assert screen.query_one("#chat-system", Input).value == "be brief"
        assert screen.query_one("#chat-model", Select).value == "gguf-260101-eeeeee"
        await say(pilot, screen, "and a vocabulary?")
        assert shows(app, "echo: and a vocabulary? (turn 2)")  # the child counted the stored turn


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workbench_export.gguf_writer import write_gguf

    root = tmp_path_factory.mktemp("chat-gguf")
    path = root / "tiny.gguf"
    write_gguf(make_tiny_model(root / "tiny"), path, "f16")
    return path


async def test_a_message_sent_while_the_model_loads_waits_and_is_answered(tiny_gguf: Path) -> None:
    from workbench.context import Context

    ctx = Context(Store())
    staged = ctx.staging_dir("gguf")
    shutil.copy2(tiny_gguf, staged / tiny_gguf.name)
    model = ctx.register("gguf", staged, name="tiny-f16").id
    app = WorkbenchApp()  # the real `workbench chat MODEL --jsonl` child
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, model)
        await wait_for(pilot, lambda: shows(app, "loading"), what="the model to start loading")
        assert not screen.ready  # llama.cpp takes a while to start; the message goes in before it
        screen.query_one("#prompt", Input).focus()
        await pilot.press(*"hello", "enter")
        # Kept, not dropped. Whether "waiting for the model to load…" is still on screen when we
        # look depends on how fast llama.cpp starts; the next test holds the load to see it.
        await wait_for(pilot, lambda: shows(app, "you: hello"), what="the queued message")
        assert screen.query_one("#prompt", Input).value == ""
        await wait_for(pilot, lambda: shows(app, "tok/s") and not screen.busy, timeout=60, what="the reply")
        assert not shows(app, "waiting for the model to load…")
        text = screen_text(app)
        assert text.count("you: hello") == 1, text
        reply = screen.query(Turn).last()
        # A random tiny model may answer with white space only; the reply's token count is the proof.
        assert reply.role == "assistant" and "tokens" in reply.stats, text


async def test_a_message_waiting_for_a_model_that_fails_to_load_goes_back_to_the_prompt() -> None:
    add_artifact(Store(), "broken-model", "gguf", "damaged")
    app = WorkbenchApp(chat_command=FAKE_CHAT)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_chat(pilot, "broken-model")
        await wait_for(pilot, lambda: shows(app, "loading broken-model"), what="the model to start loading")
        screen.query_one("#prompt", Input).focus()
        await pilot.press(*"are you there", "enter")
        await wait_for(pilot, lambda: shows(app, "waiting for the model to load…"), what="the queued message")
        (locations.home() / "load-fails").touch()
        await wait_for(pilot, lambda: shows(app, "chat process ended: error: model 'broken-model' could not"),
                       what="the child's error")
        assert shows(app, "the model did not load, so your message was not sent")
        assert not shows(app, "you: are you there") and not shows(app, "waiting for the model to load…")
        assert screen.query_one("#prompt", Input).value == "are you there"
