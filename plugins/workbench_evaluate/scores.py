"""Figures computed from model outputs: intervals, exact match, BLEU, ROUGE-L, win rates.

BLEU comes from sacrebleu (corpus BLEU, 13a tokenizer, 0–100 scale) and ROUGE-L from
Google's rouge-score (F-measure, 0–1, averaged over examples); both are imported where used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: z for a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion: sound at 0%, 100% and small n, unlike p ± z·se."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always holds p; rounding must not push a bound past it at 0% or 100%
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def normalize_answer(text: str) -> str:
    """Whitespace-insensitive, case-sensitive: 'APPLE' is not 'apple', ' 12\\n' is '12'."""
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    if not predictions:
        return 0.0
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU, 0–100: sacrebleu's 13a tokenization and exponential smoothing, with
    `effective_order`, so n-gram orders no answer is long enough to have are left out instead of
    zeroing the score (held-out answers are often one or two words)."""
    from sacrebleu.metrics import BLEU

    if not predictions:
        return 0.0
    return float(BLEU(effective_order=True).corpus_score(list(predictions), [list(references)]).score)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure, 0–1 (rouge-score's tokenizer: lower-cased alphanumeric words)."""
    from rouge_score import rouge_scorer

    if not predictions:
        return 0.0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    total = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True))
    return total / len(predictions)


def preference_outcome(chosen: float, rejected: float) -> float:
    """1 when the chosen answer scores higher, 0 when lower, ½ on an exact tie."""
    return 1.0 if chosen > rejected else 0.0 if chosen < rejected else 0.5
