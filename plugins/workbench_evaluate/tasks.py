"""The measurements, each on one loaded model (`Subject`) and the same inputs for every model.

- perplexity: sliding windows over the held-out token stream; every token after the first is
  scored once, with up to `context - stride` tokens of context carried over from the window before;
- mc: the log-likelihood of each choice's continuation after the question's prompt;
- generation: greedy answers to held-out instructions, scored by exact match, BLEU and ROUGE-L;
- preference: the log-probability of the chosen and the rejected answer after the same prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import UserError
from workbench.ml.examples import encode_pair
from workbench.prompts import PromptStyle
from workbench_evaluate.mcfile import Question, prompt_and_continuations
from workbench_evaluate.rows import Pair, Prompted
from workbench_evaluate.scores import (
    bleu,
    exact_match,
    normalize_answer,
    preference_outcome,
    rouge_l,
    wilson_interval,
)

Tick = Callable[[int], None]


@dataclass
class Subject:
    """A model loaded for measuring, with what it needs to read and write text."""

    id: str
    name: str
    backend: Any  # TorchBackend or LlamaBackend
    tokenizer: Any  # LitGPT Tokenizer, or LlamaTokenizer for a GGUF without its checkpoint
    style: PromptStyle
    stop_ids: set[int]
    stop_strings: list[str]
    notes: list[str] = field(default_factory=list)

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, bos=bos).tolist()]

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(torch.tensor(ids, dtype=torch.long))) if ids else ""


@dataclass
class Result:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# perplexity


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a stream of `n_tokens`.

    Windows overlap by at least one token, so every token after the first is scored exactly once
    and always with at least the token before it as context.
    """
    spans: list[tuple[int, int, int]] = []
    if n_tokens < 2:
        return spans
    stride = max(1, min(stride, context - 1))
    begin, scored_to = 0, 1  # position 0 has no context and is never scored
    while True:
        end = min(begin + context, n_tokens)
        if end > scored_to:
            spans.append((begin, end, max(scored_to, begin + 1)))
            scored_to = end
        if end == n_tokens:
            return spans
        begin += stride


def perplexity(subject: Subject, ids: np.ndarray, n_bytes: int, context: int, stride: int, tick: Tick,
               batch: int = 8) -> Result:
    spans = windows(len(ids), context, stride)
    if not spans:
        raise UserError("the held-out text for perplexity is shorter than two tokens; give a longer validation split")
    nll, count = 0.0, 0
    for i in range(0, len(spans), batch):
        chunk = spans[i:i + batch]
        items = [(ids[b:e].astype(np.int64).tolist(), first - b) for b, e, first in chunk]
        for lp in subject.backend.logprobs(items):
            nll -= float(lp.sum())
            count += len(lp)
        tick(len(chunk))
    ppl = math.exp(nll / count)
    metrics = {"perplexity": ppl}
    if n_bytes:
        metrics["bits_per_byte"] = nll / math.log(2) / n_bytes
    return Result(metrics, {"tokens_scored": count, "windows": len(spans), "context": context, "stride": stride,
                            "nll": nll, "bytes": n_bytes})


# ---------------------------------------------------------------------------------------------
# multiple choice


def _fit(ids: list[int], n_prompt: int, context: int) -> tuple[list[int], int]:
    """(ids, first scored position) cut to the context from the left: the prompt's start goes
    first, the scored continuation stays whole."""
    cut = max(0, len(ids) - context)
    return ids[cut:], max(1, n_prompt - cut)


def _continuation_ids(subject: Subject, prompt: str, prompt_ids: list[int], cont: str) -> list[int]:
    """The continuation's tokens as the model would see them after the prompt: the whole text is
    encoded and the prompt's tokens cut off (lm-eval-harness's rule), unless the tokenizer merged
    across the boundary, in which case the continuation is encoded on its own."""
    whole = subject.encode(prompt + cont, bos=subject.tokenizer.use_bos)
    if whole[:len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return subject.encode(cont, bos=False)


def multiple_choice(subject: Subject, questions: list[Question], fmt: str, tick: Tick) -> Result:
    """Accuracy with a Wilson 95% interval. The `letter` format picks the highest log-likelihood;
    `cloze` divides each choice's log-likelihood by its length in bytes (lm-eval's acc_norm),
    so long answers are not punished for their length."""
    correct = 0
    per_subject: dict[str, list[int]] = {}
    picks: list[int] = []
    for q in questions:
        prompt, conts = prompt_and_continuations(q, fmt)
        prompt_ids = subject.encode(prompt, bos=subject.tokenizer.use_bos)
        items = [_fit(prompt_ids + _continuation_ids(subject, prompt, prompt_ids, c), len(prompt_ids),
                      subject.backend.context) for c in conts]
        scores = [float(lp.sum()) for lp in subject.backend.logprobs(items)]
        if fmt == "cloze":
            scores = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(scores, conts, strict=True)]
        pick = int(np.argmax(scores))
        picks.append(pick)
        hit = int(pick == q.answer)
        correct += hit
        tally = per_subject.setdefault(q.subject or "-", [0, 0])
        tally[0] += hit
        tally[1] += 1
        tick(1)
    n = len(questions)
    low, high = wilson_interval(correct, n)
    return Result(
        {"mc_accuracy": correct / n, "mc_ci_low": low, "mc_ci_high": high},
        {"n": n, "correct": correct, "format": fmt,
         "subjects": {s: {"accuracy": c / t, "n": t} for s, (c, t) in sorted(per_subject.items())},
         "picked": "".join("ABCDEFGHIJ"[p] for p in picks)},
    )


# ---------------------------------------------------------------------------------------------
# generation


def answer(subject: Subject, prompt: list[dict[str, str]], max_new: int) -> str:
    """The model's greedy answer to the prompt turns, rendered with its own prompt style."""
    text = subject.style.render(prompt, add_generation_prompt=True)
    ids = subject.encode(text, bos=subject.tokenizer.use_bos)
    context = subject.backend.context
    max_new = min(max_new, max(1, context // 2))
    ids = ids[-(context - max_new):]  # a prompt too long to fit keeps its end, where the question is
    out = subject.backend.greedy(ids, max_new, subject.stop_ids)
    reply = subject.decode(out)
    for stop in subject.stop_strings:
        if stop and stop in reply:
            reply = reply[:reply.index(stop)]
    return reply.strip()


def generation(subject: Subject, rows: list[Prompted], max_new: int, tick: Tick) -> tuple[Result, list[str]]:
    predictions = []
    for row in rows:
        predictions.append(answer(subject, row.prompt, max_new))
        tick(1)
    references = [r.answer for r in rows]
    metrics = {
        "exact_match": exact_match(predictions, references),
        "bleu": bleu(predictions, references),
        "rouge_l": rouge_l(predictions, references),
    }
    samples = [
        {"prompt": r.prompt[-1]["content"], "reference": r.answer, "prediction": p,
         "exact": normalize_answer(p) == normalize_answer(r.answer)}
        for r, p in zip(rows, predictions, strict=True)
    ]
    return Result(metrics, {"n": len(rows), "samples": samples}), predictions


# ---------------------------------------------------------------------------------------------
# preference


def preference(subject: Subject, pairs: list[Pair], tick: Tick) -> Result:
    """How often the chosen answer is the more likely one. The headline, `preference_accuracy`,
    compares summed log-probabilities, the quantity DPO moves; `preference_accuracy_norm`
    compares them per token, which takes answer length out of the comparison."""
    raw, norm, margins = [], [], []
    for pair in pairs:
        items = []
        for text in (pair.chosen, pair.rejected):
            enc = encode_pair(subject.tokenizer, subject.style, pair.prompt, text)
            items.append(_fit(enc.input_ids.tolist(), enc.n_prompt, subject.backend.context))
        lp_chosen, lp_rejected = subject.backend.logprobs(items)
        c, r = float(lp_chosen.sum()), float(lp_rejected.sum())
        raw.append(preference_outcome(c, r))
        norm.append(preference_outcome(c / max(1, len(lp_chosen)), r / max(1, len(lp_rejected))))
        margins.append(c - r)
        tick(1)
    n = len(pairs)
    low, high = wilson_interval(sum(raw), n)
    return Result(
        {"preference_accuracy": sum(raw) / n, "preference_accuracy_norm": sum(norm) / n,
         "preference_margin": sum(margins) / n},
        {"n": n, "ci_low": low, "ci_high": high},
    )


def bytes_of(texts: list[str]) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def stream_from_texts(subject: Subject, texts: list[str]) -> np.ndarray:
    """Documents joined with end-of-text after each, as the token cache does (used for a GGUF
    whose checkpoint is not in the workspace, tokenized by llama.cpp)."""
    eos = subject.tokenizer.eos_id
    ids: list[int] = []
    for text in texts:
        ids += subject.encode(text, bos=False)
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def limit_documents(ids: np.ndarray, eos_id: int, limit: int | None) -> np.ndarray:
    """The first `limit` documents of a token stream (each ends with `eos_id`)."""
    if limit is None:
        return ids
    ends = np.flatnonzero(np.asarray(ids) == eos_id)
    return ids if len(ends) < limit else ids[: int(ends[limit - 1]) + 1]


def token_stream(dataset_dir: Path, tokenizer_dir: Path, limit: int | None,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The validation split's ids from the shared token cache, cut to `limit` documents."""
    from workbench_data.tokencache import cache_meta, token_array

    ids = token_array(dataset_dir, tokenizer_dir, "val", progress=progress)
    meta = cache_meta(dataset_dir, tokenizer_dir, "val") or {}
    return limit_documents(ids, int(meta.get("eos_id", -1)), limit)
