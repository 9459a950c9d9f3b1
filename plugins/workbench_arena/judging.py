"""`workbench arena judge`: the LLM judge of `workbench eval` votes in the arena.

Each comparison is put to the judge twice, the answers swapped the second time. Only when both
orders name the same answer does the judge's vote count for it; when they disagree the judge
has shown a preference for a position, not an answer, and its vote is a tie marked
inconsistent. Identical answers are a tie without asking. Re-judging human comparisons reports
how often the judge agrees with the person (a Wilson 95% interval) and Cohen's kappa, which
discounts the agreement two voters reach by chance; "both bad" counts as a tie there, as in the
ratings. A comparison already judged by the same judge is not asked again.
"""

from __future__ import annotations

import argparse
import random
import secrets
import threading
from pathlib import Path
from typing import Any

from workbench.errors import UserError
from workbench_arena.match import pick_pair, read_prompts
from workbench_arena.ratings import cohen_kappa, wilson

AS_TIE = {"both_bad": "tie"}


def agreement(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """(human vote, judge vote) pairs → the share that agree, its interval, and kappa."""
    human = [AS_TIE.get(h, h) for h, _ in pairs]
    judge = [j for _, j in pairs]
    agree = sum(h == j for h, j in zip(human, judge, strict=True))
    low, high = wilson(agree, len(pairs))
    kappa = cohen_kappa(human, judge)
    return {"n": len(pairs), "agree": agree, "rate": agree / len(pairs) if pairs else None,
            "ci_low": low, "ci_high": high, "kappa": None if kappa != kappa else kappa}


class ArenaJudge:
    """The evaluation judge, asked both ways round; votes left, right or tie."""

    def __init__(self, judge_ref: str, args: argparse.Namespace, store: Any):
        from workbench_chat.engine import resolve_model

        model = resolve_model(judge_ref, store)
        if model.backend != "llama.cpp":
            raise UserError(f"the judge must be a GGUF model (it runs in llama.cpp); {model.name} is a checkpoint: "
                            "export it with `workbench export`")
        # torch comes with the judge's module: imported only once the judge is known to be usable
        from workbench_evaluate.judge import Judge

        self.model = model
        self.judge = Judge(model.path, device=args.device, threads=args.threads)
        self.opened = 0

    def vote(self, prompt: str, left: str, right: str) -> tuple[str, dict[str, Any]]:
        from workbench_evaluate.scores import normalize_answer

        if normalize_answer(left) == normalize_answer(right):
            return "tie", {"identical": True}
        request = [{"role": "user", "content": prompt}]
        first = self.judge.prompt_ids(request, left, right)
        second = self.judge.prompt_ids(request, right, left)
        longest = max(len(first), len(second))
        if longest > self.opened:  # reopened only when a longer prompt comes along
            if self.judge.backend is not None:
                self.judge.backend.close()
            self.judge.open(longest)
            self.opened = longest
        as_asked = self.judge.verdict(first)  # 1: left (slot A) is better
        swapped = 1.0 - self.judge.verdict(second)  # 1: left (now slot B) is better
        vote = {1.0: "left", 0.0: "right"}.get(as_asked, "tie") if as_asked == swapped else "tie"
        return vote, {"orders": [as_asked, swapped], "inconsistent": as_asked != swapped}

    def close(self) -> None:
        self.judge.close()


def run_judge(judge_ref: str, args: argparse.Namespace) -> int:
    from workbench_chat.engine import resolve_model

    from workbench import locations
    from workbench.store import Store

    prompts = read_prompts(Path(args.prompts).expanduser()) if args.prompts else None
    if prompts is not None and len(args.judge_models or []) < 2:
        raise UserError("with --prompts, name the models that answer: --models MODEL MODEL [MODEL ...]")
    if prompts is None and not locations.db_path().exists():
        raise UserError("no human votes to judge yet; vote with `workbench arena MODEL MODEL` first")
    store = Store() if locations.db_path().exists() else None
    wanted = {resolve_model(ref, store).ref for ref in args.judge_models or []}
    store = store or Store()
    if prompts is None:
        todo = [v for v in store.list_votes("human")
                if not wanted or {v["model_left"], v["model_right"]} <= wanted]
        if not todo:
            raise UserError("no human votes to judge" + (" between these models" if wanted else "")
                            + "; vote with `workbench arena MODEL MODEL` first")
    judge = ArenaJudge(judge_ref, args, store)
    try:
        if prompts is None:
            report = rejudge(judge, store, todo)
        else:
            report = judge_new(judge, store, prompts, sorted(wanted), args)
    finally:
        judge.close()
    show(report, args)
    return 0


def _progress(total: int, what: str) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    return progress, progress.add_task(what, total=total)


def rejudge(judge: ArenaJudge, store: Any, humans: list[dict[str, Any]]) -> dict[str, Any]:
    mine = {v["of_vote"]: v for v in store.list_votes("judge")
            if v["of_vote"] and v["details"].get("judge_ref") == judge.model.ref}
    pairs, inconsistent, asked = [], 0, 0
    progress, task = _progress(len(humans), "judging")
    with progress:
        for human in humans:
            verdict = mine.get(human["id"])
            if verdict is None:
                vote, details = judge.vote(human["prompt"], human["answer_left"], human["answer_right"])
                store.add_vote(voter="judge", model_left=human["model_left"], model_right=human["model_right"],
                               prompt=human["prompt"], answer_left=human["answer_left"],
                               answer_right=human["answer_right"], vote=vote, seed=human["seed"],
                               of_vote=human["id"], details={**details, "judge": judge.model.name,
                                                             "judge_ref": judge.model.ref,
                                                             "names": human["details"].get("names", {})})
                verdict = {"vote": vote, "details": details}
                asked += 1
            pairs.append((human["vote"], verdict["vote"]))
            inconsistent += bool(verdict["details"].get("inconsistent"))
            progress.advance(task)
    return {"judge": judge.model.name, "judged": len(humans), "asked": asked, "inconsistent": inconsistent,
            "votes": _counts([j for _, j in pairs]), "agreement": agreement(pairs)}


def judge_new(judge: ArenaJudge, store: Any, prompts: list[str], models: list[str],
              args: argparse.Namespace) -> dict[str, Any]:
    """The models answer new prompts (pairs drawn as in the arena) and only the judge votes."""
    from workbench_chat.engine import Sampling

    from workbench_arena.play import duel, opened, resolve_models

    sampling = Sampling(max_tokens=args.max_tokens or 256).updated(
        {"temperature": args.temperature} if args.temperature is not None else {})
    refs = resolve_models(models, store)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    rng = random.Random(seed)
    names = {m.ref: m.name for m in refs}
    votes, inconsistent = [], 0
    progress, task = _progress(len(prompts), "answering and judging")
    with opened(refs, args) as engines, progress:
        for prompt in prompts:
            pair = pick_pair(list(engines), rng.randrange(2**31))
            answers = duel((engines[pair.left], engines[pair.right]), prompt,
                           sampling.updated({"seed": pair.seed}), threading.Event())
            progress.advance(task)
            if any(a.error for a in answers):
                continue
            vote, details = judge.vote(prompt, answers[0].text, answers[1].text)
            store.add_vote(voter="judge", model_left=pair.left, model_right=pair.right, prompt=prompt,
                           answer_left=answers[0].text, answer_right=answers[1].text, vote=vote, seed=pair.seed,
                           details={**details, "judge": judge.model.name, "judge_ref": judge.model.ref,
                                    "names": {"left": names[pair.left], "right": names[pair.right]},
                                    "session_seed": seed, "sampling": sampling.to_json()})
            votes.append(vote)
            inconsistent += bool(details.get("inconsistent"))
    return {"judge": judge.model.name, "judged": len(votes), "asked": len(votes), "inconsistent": inconsistent,
            "votes": _counts(votes), "seed": seed}


def _counts(votes: list[str]) -> dict[str, int]:
    return {v: votes.count(v) for v in ("left", "right", "tie")}


def show(report: dict[str, Any], args: argparse.Namespace) -> None:
    from workbench.output import console, print_json

    if getattr(args, "json", False):
        print_json(report)
        return
    out = console()
    out.print(f"judge {report['judge']}: {report['judged']} comparisons ({report['asked']} asked now, "
              f"each in both orders) · left {report['votes']['left']} · right {report['votes']['right']} · "
              f"tie {report['votes']['tie']}", markup=False)
    out.print(f"inconsistent: {report['inconsistent']} (the verdict changed when the answers swapped places; "
              "counted as ties)", markup=False)
    a = report.get("agreement")
    if a:
        kappa = "undefined (one voter gave one answer only)" if a["kappa"] is None else f"{a['kappa']:.2f}"
        out.print(f"agreement with the human votes: {a['agree']} of {a['n']} = {a['rate']:.0%} "
                  f"(95% CI {a['ci_low']:.0%}–{a['ci_high']:.0%}) · Cohen's kappa {kappa}", markup=False)
