"""LLM-as-judge: a local GGUF model compares two models' answers to the same instructions.

AlpacaEval's way: every model is compared with a baseline (the first model evaluated), and its
win rate is the share of prompts on which the judge prefers its answer, ties counting half.
Judges favour one position, so each pair is asked twice with the answers swapped; a judge that
always names the first slot gives every pair one win and one loss, a tie. The verdict is read
from the judge's next-token logits for "A" and "B" after its own chat template's assistant
prompt, so it is deterministic and never a parse failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.prompts import PromptStyle
from workbench_evaluate.backends import LlamaBackend, LlamaTokenizer, gguf_metadata
from workbench_evaluate.scores import normalize_answer

QUESTION = (
    "You are judging two answers to the same request. Pick the answer that fulfils the request "
    "better: correct, helpful and to the point.\n\n"
    "Request:\n{request}\n\n"
    "Answer A:\n{a}\n\n"
    "Answer B:\n{b}\n\n"
    "Which answer is better? Reply with one letter: A or B."
)


def request_text(prompt: list[dict[str, str]]) -> str:
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass
class Comparison:
    """One model against the baseline over the same prompts."""

    scores: list[float]  # per prompt: 1 the model wins, 0 the baseline wins, ½ a tie
    consistent: int  # prompts where both orders gave the same winner
    identical: int  # prompts where both answers were the same text (a tie, not asked)

    @property
    def win_rate(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"n": len(self.scores), "wins": sum(s > 0.5 for s in self.scores),
                "ties": sum(s == 0.5 for s in self.scores), "losses": sum(s < 0.5 for s in self.scores),
                "identical": self.identical, "consistent_orders": self.consistent, "win_rate": self.win_rate}


class Judge:
    def __init__(self, path: Path, *, device: str, threads: int | None):
        self.path = path
        meta = gguf_metadata(path)
        self.tokenizer = LlamaTokenizer(path, meta)
        template = meta.get("tokenizer.chat_template")
        eos_id = self.tokenizer.eos_id
        eos = self.tokenizer.llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id is not None else ""
        origin = f"judge {path.name} (tokenizer.chat_template of {path})"
        self.style = PromptStyle("judge", template, eos_token=eos, origin=origin).check() if template else None
        # After an assistant prompt the reply starts at a fresh token; in plain text it follows a space.
        first = "" if self.style else " "
        self.letters = [self._first_token(first + letter) for letter in ("A", "B")]
        self.device, self.threads = device, threads
        self.backend: LlamaBackend | None = None

    def _first_token(self, text: str) -> int:
        return int(self.tokenizer.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[0])

    def prompt_ids(self, prompt: list[dict[str, str]], a: str, b: str) -> list[int]:
        question = QUESTION.format(request=request_text(prompt), a=a, b=b)
        if self.style is not None:
            text = self.style.render([{"role": "user", "content": question}], add_generation_prompt=True)
        else:
            text = question + "\n\nBetter answer:"
        return [int(i) for i in self.tokenizer.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)]

    def open(self, longest: int) -> None:
        self.backend = LlamaBackend(self.path, context=longest, device=self.device, threads=self.threads,
                                    n_ctx=longest)

    def verdict(self, ids: list[int]) -> float:
        """1 if the judge prefers answer A, 0 if B, ½ if it cannot tell them apart."""
        assert self.backend is not None
        ids = ids[-self.backend.context:]
        logits = self.backend.next_logits(ids)
        a, b = float(logits[self.letters[0]]), float(logits[self.letters[1]])
        return 1.0 if a > b else 0.0 if a < b else 0.5

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.tokenizer.close()


def compare(judge: Judge, prompts: list[list[dict[str, str]]], baseline: list[str],
            answers: dict[str, list[str]], tick: Any) -> dict[str, Comparison]:
    """Each model's answers against the baseline's, both orders asked."""
    jobs: list[tuple[str, int, list[int], list[int]]] = []
    results = {mid: Comparison([0.5] * len(prompts), 0, 0) for mid in answers}
    for mid, theirs in answers.items():
        for i, (prompt, base, ans) in enumerate(zip(prompts, baseline, theirs, strict=True)):
            if normalize_answer(base) == normalize_answer(ans):
                results[mid].identical += 1
                results[mid].consistent += 1
                tick(1)
                continue
            jobs.append((mid, i, judge.prompt_ids(prompt, ans, base), judge.prompt_ids(prompt, base, ans)))
    if not jobs:
        return results
    judge.open(max(len(ids) for job in jobs for ids in job[2:]))
    for mid, i, model_first, model_second in jobs:
        first = judge.verdict(model_first)  # 1: the model's answer (slot A) wins
        second = 1.0 - judge.verdict(model_second)  # 1: the model's answer (slot B) wins
        results[mid].scores[i] = (first + second) / 2
        results[mid].consistent += int(first == second)
        tick(1)
    return results
