"""Arena: two anonymised models answer the same prompt side by side, as A (left) and B (right);
one key votes, and only then are they named. Each chosen model runs in its own
`workbench chat MODEL --jsonl` child, as in the Chat view, so both stream at once and no model
library enters the UI process. Votes go to the workspace store; the leaderboard below is fitted
over all human votes (the arena plugin's Bradley–Terry ratings)."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rich.cells import cell_len
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.widgets import DataTable, Input, SelectionList, Static

from workbench.store import Artifact
from workbench.tui.chat_client import DEFAULT_COMMAND, ChatClient
from workbench.tui.data import CHAT_KINDS, open_store
from workbench.tui.screens.base import WorkbenchScreen

if TYPE_CHECKING:
    from workbench.tui.app import WorkbenchApp

#: Sampling for both answers; the round's seed is added to it.
SAMPLING: dict[str, Any] = {"max_tokens": 256}
#: Control characters a model may emit (a random one often does) would move the cursor.
UNPRINTABLE = {c: "\N{REPLACEMENT CHARACTER}" for c in [*range(32), 127] if chr(c) not in "\n\t"}
BOARD_COLUMNS = ("#", "model", "rating", "95% CI", "votes", "W / T / L")
VERDICTS = {"left": "A is better", "right": "B is better", "tie": "a tie", "both_bad": "both bad"}


@dataclass
class Round:
    """One comparison being answered or waiting for its vote."""

    left: str
    right: str
    seed: int
    prompt: str
    text: dict[str, str] = field(default_factory=lambda: {"left": "", "right": ""})
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)

    def side(self, model: str) -> str:
        return "left" if model == self.left else "right"


class ArenaScreen(WorkbenchScreen):
    VIEW = "arena"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "vote('left')", "A is better", tooltip="Vote for the left answer"),
        Binding("2", "vote('right')", "B is better", tooltip="Vote for the right answer"),
        Binding("t", "vote('tie')", "Tie", tooltip="Both answers are as good"),
        Binding("b", "vote('both_bad')", "Both bad", tooltip="Neither answer is any good (counts as a tie)"),
        Binding("s", "skip", "Skip", tooltip="No vote on this prompt"),
        Binding("ctrl+o", "focus_models", "Models", tooltip="Choose the models that take part"),
        Binding("escape", "focus_prompt", "Prompt", show=False, tooltip="Back to the prompt"),
    ]
    DEFAULT_CSS = """
    #arena-models { height: auto; max-height: 6; margin: 1 1 0 1; }
    #arena-status { padding: 0 1; color: $text-muted; }
    #arena-answers { height: 1fr; }
    .arena-side { width: 1fr; border: round $primary-muted; padding: 0 1; }
    .arena-side:focus-within { border: round $primary; }
    #arena-board { height: auto; max-height: 9; border: round $primary-muted; }
    """
    app: WorkbenchApp

    def __init__(self) -> None:
        super().__init__()
        self.models: list[Artifact] = []
        self.clients: dict[str, ChatClient] = {}
        self.seed = secrets.randbits(31)
        self.rng = random.Random(self.seed)
        self.round: Round | None = None
        self.voting = False

    def compose_body(self) -> ComposeResult:
        yield SelectionList[str](id="arena-models")
        yield Static("choose two or more models, then type a prompt", id="arena-status")
        with Horizontal(id="arena-answers"):
            for side in ("A", "B"):
                with VerticalScroll(classes="arena-side", id=f"arena-{side.lower()}") as pane:
                    pane.border_title = side
                    yield Static("", id=f"arena-{side.lower()}-text", markup=False)
        yield Input(placeholder="Prompt, Enter sends it to two of the chosen models", id="arena-prompt")
        yield DataTable(id="arena-board", cursor_type="none", zebra_stripes=True)

    def on_mount(self) -> None:
        self._show_board([])
        self.query_one("#arena-models", SelectionList).border_title = "models taking part"
        self.load_models()
        self.load_board()
        self.query_one("#arena-prompt", Input).focus()

    def on_screen_resume(self) -> None:
        self.load_models()

    async def on_unmount(self) -> None:
        for client in self.clients.values():
            await client.close()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # Vote keys exist only while a vote is due; otherwise 1 and 2 switch views as everywhere.
        if action in ("vote", "skip"):
            return self.voting
        return True

    # models and leaderboard ---------------------------------------------------------------

    @work(thread=True, exclusive=True, group="arena-models", exit_on_error=False)
    def load_models(self) -> None:
        with open_store() as store:
            models = [a for a in store.list_artifacts() if a.kind in CHAT_KINDS] if store else []
        self.app.call_from_thread(self._show_models, models)

    def _show_models(self, models: list[Artifact]) -> None:
        if [m.id for m in models] == [m.id for m in self.models]:
            return
        picker = self.query_one("#arena-models", SelectionList)
        chosen = set(picker.selected)
        picker.clear_options()
        picker.add_options([(f"{m.name} · {m.kind} · {m.id}", m.id, m.id in chosen) for m in reversed(models)])
        self.models = models

    @work(thread=True, exclusive=True, group="arena-board", exit_on_error=False)
    def load_board(self) -> None:
        from workbench_arena.report import ratings_json, stored_votes

        rows = ratings_json(stored_votes("human"), bootstrap=200)
        self.app.call_from_thread(self._show_board, rows)

    def _show_board(self, rows: list[dict[str, Any]]) -> None:
        board = self.query_one("#arena-board", DataTable)
        board.border_title = "leaderboard (human votes)" if rows else "leaderboard: no votes yet"
        cells = [(str(rank), r["name"], f"{r['rating']:.0f}", f"{r['ci_low']:.0f} – {r['ci_high']:.0f}",
                  str(r["votes"]), f"{r['wins']} / {r['ties']} / {r['losses']}") for rank, r in enumerate(rows, start=1)]
        # Widths set here, from the cells: DataTable widens auto-width columns only when it next
        # goes idle, and until then a name showed cut to the width of its heading.
        board.clear(columns=True)
        for i, label in enumerate(BOARD_COLUMNS):
            board.add_column(label, width=max([cell_len(label), *(cell_len(c[i]) for c in cells)]))
        board.add_rows(cells)

    def model_name(self, model_id: str, short: bool = False) -> str:
        art = next((m for m in self.models if m.id == model_id), None)
        if art is None:
            return model_id
        return art.name if short else f"{art.name} ({art.id})"

    # a round ---------------------------------------------------------------------------------

    def _status(self, text: str | Content) -> None:
        self.query_one("#arena-status", Static).update(text)

    def _show_answers(self) -> None:
        r = self.round
        for side, key in (("a", "left"), ("b", "right")):
            text = r.text[key] if r else ""
            shown = text.translate(UNPRINTABLE) or ("…" if r and not self.voting else "")
            self.query_one(f"#arena-{side}-text", Static).update(shown)

    def _titles(self, reveal: bool) -> None:
        r = self.round
        for side, key in (("A", "left"), ("B", "right")):
            model = (r.left if key == "left" else r.right) if r else ""
            pane = self.query_one(f"#arena-{side.lower()}", VerticalScroll)
            pane.border_title = f"{side} · {self.model_name(model)}" if reveal and model else side

    @on(Input.Submitted, "#arena-prompt")
    async def _send(self, event: Input.Submitted) -> None:
        from workbench_arena.match import pick_pair

        prompt = event.value.strip()
        if not prompt:
            return
        chosen = list(self.query_one("#arena-models", SelectionList).selected)
        if len(chosen) < 2:
            self.notify("Choose two or more models first (Ctrl+O).", severity="warning")
            return
        if self.round is not None:
            self.notify("Vote on these answers first (1, 2, t, b; s skips).", severity="warning")
            return
        event.input.clear()
        pair = pick_pair(chosen, self.rng.randrange(2**31))
        self.round = Round(pair.left, pair.right, pair.seed, prompt)
        self._titles(reveal=False)
        self._show_answers()
        self._status(f"both models are answering… (arena seed {self.seed})")
        self.query_one("#arena-a").focus()  # out of the prompt, so the vote keys reach the screen
        for model in (pair.left, pair.right):
            client = await self._client(model)
            await client.send({"type": "reset"})  # each prompt is a conversation of its own
            await client.send({"type": "user", "content": prompt, "seed": pair.seed, **SAMPLING})

    async def _client(self, model: str) -> ChatClient:
        """The chat child for `model`, started at its first round and kept for the next ones."""
        client = self.clients.get(model)
        if client is None or not client.running:
            client = self.clients[model] = ChatClient([*(self.app.chat_command or DEFAULT_COMMAND), "--no-save"])
            await client.start(model)
            self.follow(model, client)
        return client

    @work(group="arena-children", exit_on_error=False)
    async def follow(self, model: str, client: ChatClient) -> None:
        """Turn one child's lines into the round's answers."""
        async for message in client.events():
            r, kind = self.round, message.get("type")
            if r is None or model not in (r.left, r.right) or r.side(model) in r.done:
                continue
            side = r.side(model)
            if kind == "token":
                r.text[side] += str(message.get("text", ""))
            elif kind == "done":
                r.stats[side] = message.get("stats") or {}
                r.done.add(side)
            elif kind in ("error", "exit"):
                r.errors.append(str(message.get("message") or message.get("stderr") or "the model stopped"))
                r.done.add(side)
            else:
                continue
            self._show_answers()
            if r.done == {"left", "right"}:
                self._answered()

    def _answered(self) -> None:
        r = self.round
        assert r is not None
        if r.errors:
            self.round = None
            self._status(Content.styled("no vote on this prompt: " + "; ".join(r.errors), "$text-error"))
            self.query_one("#arena-prompt", Input).focus()
            return
        self.voting = True
        self.refresh_bindings()
        self._status(Content.assemble(Content.styled("your vote: ", "bold"),
                                      "1 A is better · 2 B is better · t tie · b both bad · s skip"))

    def action_vote(self, vote: str) -> None:
        r = self.round
        if r is None or not self.voting:
            return
        self._store_vote(r, vote)
        self._reveal(VERDICTS[vote])

    def action_skip(self) -> None:
        if self.round is not None and self.voting:
            self._reveal("skipped")

    def _reveal(self, verdict: str) -> None:
        r = self.round
        assert r is not None
        self._titles(reveal=True)
        self._status(Content.assemble(Content.styled(verdict, "bold"),
                                      f" · A was {self.model_name(r.left, short=True)}"
                                      f" · B was {self.model_name(r.right, short=True)}"))
        self.round, self.voting = None, False
        self.refresh_bindings()
        self.query_one("#arena-prompt", Input).focus()

    @work(thread=True, group="arena-vote", exit_on_error=False)
    def _store_vote(self, r: Round, vote: str) -> None:
        with open_store(create=True) as store:
            assert store is not None
            store.add_vote(
                voter="human", model_left=r.left, model_right=r.right, prompt=r.prompt,
                answer_left=r.text["left"], answer_right=r.text["right"], vote=vote, seed=r.seed,
                details={"names": {"left": self.model_name(r.left), "right": self.model_name(r.right)},
                         "sampling": {**SAMPLING, "seed": r.seed}, "session_seed": self.seed,
                         "stats": r.stats, "face": "tui"})
        self.app.call_from_thread(self.load_board)

    def action_focus_models(self) -> None:
        self.query_one("#arena-models", SelectionList).focus()

    def action_focus_prompt(self) -> None:
        self.query_one("#arena-prompt", Input).focus()
