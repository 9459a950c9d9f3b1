"""Chat: pick a model, type, watch the reply stream in with its speed. The model runs in a
`workbench chat MODEL --jsonl` child process, which also keeps the conversation's history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import Input, Select, Static

from workbench.store import Artifact
from workbench.tui.chat_client import ChatClient
from workbench.tui.data import CHAT_KINDS, fmt_num, open_store
from workbench.tui.screens.base import WorkbenchScreen

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp


class Turn(Static):
    """One turn of the transcript; an assistant turn grows token by token."""

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(classes=f"message -{role}", markup=False)
        self.role = role
        self.text = text
        self.stats = ""

    def on_mount(self) -> None:
        self._render_text()

    def append(self, piece: str) -> None:
        self.text += piece
        self._render_text()

    def finish(self, stats: str) -> None:
        self.stats = stats
        self._render_text()

    def _render_text(self) -> None:
        label = {"user": "you", "assistant": "model"}.get(self.role, self.role)
        parts = [Content.styled(f"{label}: ", "bold"), Content(self.text or ("…" if self.role == "assistant" else ""))]
        if self.stats:
            parts.append(Content.styled(f"\n{self.stats}", "$text-muted"))
        self.update(Content.assemble(*parts))


def stats_text(stats: dict[str, Any]) -> str:
    parts = []
    if "tokens" in stats:
        parts.append(f"{stats['tokens']} tokens")
    if stats.get("tokens_per_s") is not None:
        parts.append(f"{fmt_num(float(stats['tokens_per_s']))} tok/s")
    if stats.get("ttft_s") is not None:
        parts.append(f"first token {fmt_num(float(stats['ttft_s']))} s")
    if 0 < stats.get("threads", 0) < stats.get("cores", 0):
        parts.append(f"{stats['threads']} of {stats['cores']} cores (others are busy)")
    return " · ".join(parts)


class ChatScreen(WorkbenchScreen):
    VIEW = "chat"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+n", "new_chat", "New chat", tooltip="Forget the conversation and start again"),
        Binding("ctrl+o", "focus_model", "Model", tooltip="Choose the model to chat with"),
        Binding("ctrl+l", "conversations", "History", tooltip="Continue or delete a stored conversation"),
        Binding("escape", "escape", "Leave/enter the prompt", show=False,
                tooltip="Esc leaves a text field so the view keys work; Esc again goes back to the prompt"),
    ]
    app: WorkbenchApp

    def __init__(self) -> None:
        super().__init__()
        self.client: ChatClient | None = None
        self.models: list[Artifact] = []
        self.ready = False
        #: A chat child was started and has not yet said it is ready (nor exited).
        self.starting = False
        self.busy = False
        self.reply: Turn | None = None
        self.wanted: str | None = None
        #: A message sent while the model loads, and what shows it as waiting; sent once ready.
        self.queued: str | None = None
        self._queued_shown: list[Static] = []

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="chat-top"):
            yield Select[str]([], prompt="choose a model (gguf or model)", id="chat-model", compact=True)
            yield Input(placeholder="system prompt (optional)", id="chat-system", compact=True)
        yield Static("no model chosen", id="chat-status")
        yield VerticalScroll(id="transcript")
        yield Input(placeholder="Message, Enter sends", id="prompt")

    def on_mount(self) -> None:
        self.query_one("#transcript", VerticalScroll).anchor()  # follow new lines until scrolled up
        self.load_models()
        self.query_one("#prompt", Input).focus()

    def on_screen_resume(self) -> None:
        self.load_models()

    async def on_unmount(self) -> None:
        if self.client is not None:
            await self.client.close()

    # models -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="chat-models", exit_on_error=False)
    def load_models(self) -> None:
        with open_store() as store:
            models = [a for a in store.list_artifacts() if a.kind in CHAT_KINDS] if store else []
        self.app.call_from_thread(self._show_models, models)

    def _show_models(self, models: list[Artifact]) -> None:
        select = self.query_one("#chat-model", Select)
        if [m.id for m in models] != [m.id for m in self.models]:
            current = select.value
            with self.prevent(Select.Changed):
                select.set_options([(f"{m.name} · {m.kind} · {m.id}", m.id) for m in reversed(models)])
                if any(m.id == current for m in models):
                    select.value = current
        self.models = models
        if self.wanted and any(m.id == self.wanted for m in models):
            wanted, self.wanted = self.wanted, None
            select.value = wanted

    def choose_model(self, model_id: str) -> None:
        """Open a conversation with this model (from the Models or Pipeline view)."""
        self.wanted = model_id
        self.load_models()

    @on(Select.Changed, "#chat-model")
    def _model_changed(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            self.connect(event.value)

    def action_focus_model(self) -> None:
        self.query_one("#chat-model", Select).focus()

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", Input).focus()

    def action_escape(self) -> None:
        """Out of a text field the view keys (digits, ?) work again; Esc again goes back in."""
        if isinstance(self.focused, Input):
            self.query_one("#transcript", VerticalScroll).focus()
            self.notify("Esc goes back to the prompt", timeout=3)
        else:
            self.action_focus_prompt()

    # the conversation -----------------------------------------------------------------------

    def _status(self, text: str | Content) -> None:
        self.query_one("#chat-status", Static).update(text)

    @work(exclusive=True, group="chat", exit_on_error=False)
    async def connect(self, model: str, resume: str | None = None) -> None:
        """Start a chat process for `model` (continuing conversation `resume`) and turn its lines
        into the transcript."""
        if self.client is not None:
            await self.client.close()
        self.ready = self.busy = False
        self.starting = True
        self.reply = None
        self._status(f"loading {model}…")
        if resume:
            await self.query_one("#transcript").remove_children()
        else:
            self._note(f"new conversation with {model}")
        client = self.client = ChatClient(self.app.chat_command)
        await client.start(model, resume=resume)
        async for message in client.events():
            kind = message.get("type")
            if kind == "ready":
                self.ready, self.starting = True, False
                ctx = f" · context {message['n_ctx']} tokens" if message.get("n_ctx") else ""
                self._status(f"ready · {message.get('model', model)}{ctx}")
                if resume:
                    await self._show_history(message)
                if self.queued is not None:
                    await self._send_queued()
            elif kind == "token" and self.reply is not None:
                self.reply.append(str(message.get("text", "")))
            elif kind == "done":
                stats = stats_text(message.get("stats") or {})
                if self.reply is not None:
                    self.reply.finish(stats)
                self.busy, self.reply = False, None
                self._status(Content.assemble("ready · last reply ", Content.styled(stats, "bold")))
            elif kind == "notice":
                self._note(str(message.get("message", "")))
            elif kind == "error":
                self.busy, self.reply = False, None
                self._note(str(message.get("message", "")), error=True)
            elif kind == "exit" and self.client is client:
                self.ready = self.busy = self.starting = False
                reason = message.get("stderr") or f"exit code {message.get('code')}"
                self._status(Content.styled(f"chat process ended: {reason}", "$text-error"))
                if self.queued is not None:
                    self._unqueue()
                    self._note("the model did not load, so your message was not sent; it is back in the prompt",
                               error=True)

    async def _show_history(self, ready: dict[str, Any]) -> None:
        """A resumed conversation's stored turns, as the child loaded them."""
        turns = [Turn(m["role"], m["content"]) for m in ready.get("messages") or []
                 if m.get("role") in ("user", "assistant")]
        note = Static(f"continuing {ready.get('conversation_id')} ({len(turns)} messages)", classes="chat-note")
        await self.query_one("#transcript").mount_all([note, *turns])
        self.query_one("#chat-system", Input).value = str(ready.get("system") or "")
        self._scroll()

    def action_conversations(self) -> None:
        from workbench.tui.screens.conversations import ConversationsScreen

        def chosen(conv: dict[str, Any] | None) -> None:
            if conv is None:
                return
            select = self.query_one("#chat-model", Select)
            with self.prevent(Select.Changed):  # the resume below starts the child, not the picker
                if any(m.id == conv["model"] for m in self.models):
                    select.value = conv["model"]
            self.connect(conv["model"], resume=conv["id"])

        self.app.push_screen(ConversationsScreen(), chosen)

    def _note(self, text: str, error: bool = False) -> None:
        note = Static(text, classes="chat-note -error" if error else "chat-note", markup=False)
        # a notice about the turn being answered (context trimmed, say) belongs above its reply
        before = self.reply if self.reply is not None and self.reply.is_mounted else None
        self.query_one("#transcript").mount(note, before=before)

    def _scroll(self) -> None:
        """Back to the newest line, and keep following it."""
        self.query_one("#transcript", VerticalScroll).anchor()

    @on(Input.Submitted, "#prompt")
    async def _send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if not (self.ready or self.starting):
            self.notify("Choose a model first.", severity="warning")
            return
        if not self.ready:
            if self.queued is not None:
                self.notify("A message is already waiting for the model to load.", severity="warning")
                return
            await self._queue(text)
            event.input.clear()
            return
        if self.busy:
            self.notify("Still answering; wait for the reply to finish.", severity="warning")
            return
        event.input.clear()
        await self._submit(text)

    async def _queue(self, text: str) -> None:
        """Keep a message typed while the model loads; it is sent when the child is ready."""
        self.queued = text
        self._queued_shown = [Turn("user", text),
                              Static("waiting for the model to load…", classes="chat-note", markup=False)]
        await self.query_one("#transcript").mount_all(self._queued_shown)
        self._scroll()

    def _unqueue(self) -> None:
        """Take the waiting message off the transcript and back into the prompt."""
        text, self.queued = self.queued, None
        for widget in self._queued_shown:
            if widget.is_mounted:
                widget.remove()
        self._queued_shown = []
        prompt = self.query_one("#prompt", Input)
        if text and not prompt.value.strip():
            prompt.value = text

    async def _send_queued(self) -> None:
        text, self.queued = self.queued, None
        for widget in self._queued_shown:  # shown again below, in order, as an ordinary turn
            if widget.is_mounted:
                await widget.remove()
        self._queued_shown = []
        if text:
            await self._submit(text)

    async def _submit(self, text: str) -> None:
        assert self.client is not None
        transcript = self.query_one("#transcript")
        self.reply = Turn("assistant")
        await transcript.mount_all([Turn("user", text), self.reply])
        self._scroll()
        self.busy = True
        message: dict[str, Any] = {"type": "user", "content": text}
        system = self.query_one("#chat-system", Input).value.strip()
        if system:
            message["system"] = system
        await self.client.send(message)

    async def action_new_chat(self) -> None:
        if self.queued is not None:
            self._unqueue()
        self.busy, self.reply = False, None
        await self.query_one("#transcript").remove_children()
        if self.client is not None and self.ready:
            await self.client.send({"type": "reset"})  # the child answers with a notice
        else:
            self._note("new conversation")
