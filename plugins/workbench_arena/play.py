"""The arena in a terminal: both models answer at once (a thread each), the answers are shown
as A and B, the vote is read from stdin, and only then are the models named.

With a terminal on stdout the two answers stream side by side; otherwise (a pipe, a test) each
is printed whole once both are done, so scripted stdin sees the same order of questions.
"""

from __future__ import annotations

import argparse
import queue
import random
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench_chat.engine import Engine, ModelRef, Sampling, open_engine, resolve_model
from workbench_chat.session import ChatSession

from workbench.errors import UserError
from workbench.hardware import FreeCores
from workbench_arena.match import VOTE_HELP, Pairing, parse_vote, pick_pair, read_prompts

DEFAULT_MAX_TOKENS = 256
SIDES = ("A", "B")


@dataclass
class Answer:
    text: str = ""
    error: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    done: bool = False


def resolve_models(refs: list[str], store: Any) -> list[ModelRef]:
    """The arena's models, each once; fewer than two distinct ones is an error."""
    models: dict[str, ModelRef] = {}
    for ref in refs:
        model = resolve_model(ref, store)
        models.setdefault(model.ref, model)
    if len(models) < 2:
        raise UserError("the arena needs at least two different models; "
                        f"{' and '.join(refs)} {'are' if len(refs) > 1 else 'is'} one")
    return list(models.values())


def open_engines(models: list[ModelRef], args: argparse.Namespace) -> dict[str, Engine]:
    engines: dict[str, Engine] = {}
    try:
        for model in models:
            engine = open_engine(model, threads=args.threads, device=args.device)
            if engine.thread_plan is not None:
                # Two models answer at once: each gets half of what it would have alone.
                engine.thread_plan = FreeCores(max(1, engine.thread_plan.ceiling // 2))
            engines[model.ref] = engine
            for note in engine.notes:
                sys.stderr.write(f"{model.name}: {note}\n")
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines


def duel(engines: tuple[Engine, Engine], prompt: str, sampling: Sampling, stop: threading.Event,
         on_piece: Callable[[tuple[Answer, Answer]], None] | None = None) -> tuple[Answer, Answer]:
    """Both engines answer `prompt` at once; `on_piece` sees both answers after each new piece."""
    answers = (Answer(), Answer())
    events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()

    def answer(side: int) -> None:
        session = ChatSession(engines[side], sampling=sampling)
        try:
            for event in session.send(prompt, should_stop=stop.is_set):
                events.put((side, event))
        except Exception as exc:  # one side's failure ends its answer, not the arena
            events.put((side, {"type": "error", "message": f"{type(exc).__name__}: {exc}"}))
        events.put((side, {"type": "end"}))

    threads = [threading.Thread(target=answer, args=(side,), daemon=True) for side in (0, 1)]
    for t in threads:
        t.start()
    try:
        while not all(a.done for a in answers):
            side, event = events.get()
            a = answers[side]
            if event["type"] == "token":
                a.text += event["text"]
            elif event["type"] == "done":
                a.stats = event["stats"]
            elif event["type"] == "error":
                a.error = event["message"]
            elif event["type"] == "end":
                a.done = True
            if on_piece is not None:
                on_piece(answers)
    finally:
        stop.set()  # a Ctrl-C here stops both answers at their next token
        for t in threads:
            t.join()
        stop.clear()
    return answers


class Arena:
    def __init__(self, engines: dict[str, Engine], store: Any, sampling: Sampling, seed: int,
                 names: dict[str, str]):
        from rich.console import Console

        self.engines = engines
        self.store = store
        self.sampling = sampling
        self.rng = random.Random(seed)
        self.seed = seed
        self.names = names
        self.console = Console(highlight=False)
        self.live = self.console.is_terminal
        self.stop = threading.Event()
        self.votes = 0

    def ask(self, question: str) -> str | None:
        """A line from stdin (None at its end), after `question` on stdout."""
        self.console.print(question, end="", markup=False)
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not sys.stdin.isatty():
            self.console.print(line.rstrip("\n"), markup=False)  # a scripted answer shows in the transcript
        return line.rstrip("\n") if line else None

    def run(self, prompts: list[str] | None) -> int:
        self.console.print(f"arena seed {self.seed} · {len(self.engines)} models · "
                           "the models are named after each vote", style="dim")
        source = iter(prompts) if prompts is not None else None
        for n in range(1, 1 << 30):
            prompt = next(source, None) if source is not None else self.typed_prompt()
            if prompt is None:
                break
            if not self.round(n, prompt):
                break
        self.console.print(f"{self.votes} vote{'s' if self.votes != 1 else ''} stored; "
                           "see `workbench arena ratings`", style="dim")
        return 0

    def typed_prompt(self) -> str | None:
        while True:
            line = self.ask("prompt> ")
            if line is None or line.strip() in ("/exit", "/quit"):
                return None
            if line.strip():
                return line.strip()

    def round(self, n: int, prompt: str) -> bool:
        """One comparison; False when stdin ended before a vote."""
        pair = pick_pair(list(self.engines), self.rng.randrange(2**31))
        sampling = self.sampling.updated({"seed": pair.seed})
        self.console.rule(f"round {n}")
        self.console.print(f"prompt: {prompt}", markup=False)
        answers = self.show(pair, prompt, sampling)
        failed = [f"{side}: {a.error}" for side, a in zip(SIDES, answers, strict=True) if a.error]
        if failed:
            self.console.print("no vote on this prompt: " + "; ".join(failed), style="red", markup=False)
            return True
        while True:
            line = self.ask("vote [1] A better  [2] B better  [t] tie  [b] both bad  [s] skip > ")
            if line is None:
                return False
            if line.strip().lower() in ("s", "skip"):
                vote = None
                break
            vote = parse_vote(line)
            if vote is not None:
                break
            self.console.print(f"say {VOTE_HELP}, or s to skip", style="yellow")
        if vote is not None:
            self.store.add_vote(
                voter="human", model_left=pair.left, model_right=pair.right, prompt=prompt,
                answer_left=answers[0].text, answer_right=answers[1].text, vote=vote, seed=pair.seed,
                details={"names": {"left": self.names[pair.left], "right": self.names[pair.right]},
                         "sampling": sampling.to_json(), "session_seed": self.seed,
                         "stats": {"left": answers[0].stats, "right": answers[1].stats}})
            self.votes += 1
        verdict = {"left": "A is better", "right": "B is better", "tie": "a tie", "both_bad": "both bad",
                   None: "skipped"}[vote]
        self.console.print(f"{verdict} · A was {self.names[pair.left]} · B was {self.names[pair.right]}",
                           style="bold", markup=False)
        return True

    def show(self, pair: Pairing, prompt: str, sampling: Sampling) -> tuple[Answer, Answer]:
        engines = (self.engines[pair.left], self.engines[pair.right])
        if not self.live:
            answers = duel(engines, prompt, sampling, self.stop)
            for side, a in zip(SIDES, answers, strict=True):
                self.console.print(f"[{side}]", style="bold")
                self.console.print(a.text if a.error is None else f"(error: {a.error})", markup=False)
            return answers
        from rich.columns import Columns
        from rich.live import Live
        from rich.panel import Panel
        from rich.text import Text

        def view(answers: tuple[Answer, Answer]) -> Columns:
            width = max(20, (self.console.width - 4) // 2)
            return Columns([Panel(Text(a.text or ("…" if not a.done else "")), title=side, width=width)
                            for side, a in zip(SIDES, answers, strict=True)])

        with Live(view((Answer(), Answer())), console=self.console, refresh_per_second=12) as live:
            return duel(engines, prompt, sampling, self.stop, lambda answers: live.update(view(answers)))


@contextmanager
def opened(models: list[ModelRef], args: argparse.Namespace) -> Iterator[dict[str, Engine]]:
    engines = open_engines(models, args)
    try:
        yield engines
    finally:
        for engine in engines.values():
            engine.close()


def run_arena(args: argparse.Namespace) -> int:
    from workbench import locations
    from workbench.store import Store

    # Everything that can be wrong is checked before the workspace is touched.
    sampling = Sampling(max_tokens=DEFAULT_MAX_TOKENS).updated(
        {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens)) if v is not None})
    prompts = read_prompts(Path(args.prompts).expanduser()) if args.prompts else None
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} is not a thread count; use 1 or more")
    store = Store() if locations.db_path().exists() else None  # a missing model must not create it
    models = resolve_models(args.models, store)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    sys.stderr.write(f"loading {', '.join(m.name for m in models)}…\n")
    with opened(models, args) as engines:
        return Arena(engines, store or Store(), sampling, seed, {m.ref: m.name for m in models}).run(prompts)
