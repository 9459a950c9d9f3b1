"""The dataset card: what a prepared dataset holds, in numbers, and the tables the CLI prints.

The card answers the three questions asked of a pretraining set as far as numbers can:
relevance (where the text came from, its most frequent terms), quality (how much the filters
removed, symbol and letter ratios of what is left) and diversity (distinct words and 3-grams,
duplicates removed, label balance). `length_histogram` is ready for a chart: bin edges in
characters (powers of two) and a count per bin.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench_data.clean import alpha_word_ratio, symbol_ratio
from workbench_data.rows import Row, body

_TERM = re.compile(r"[^\W\d_]{3,}")
# Words too common to say anything about what a corpus is about.
_STOP_WORDS = (
    "the and for that this with are was you not but have from they his her she him its can "
    "will all one has been were their there which what when who would should could into than "
    "then them these those also any our out use used may more most other some such only over "
    "your how each just like get does did had let see same very because while where why yes"
)
_STOP = frozenset(_STOP_WORDS.split())
_SAMPLE_WORDS = 200_000


def length_stats(lengths: Sequence[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0, "median": 0, "mean": 0.0, "p90": 0, "max": 0}
    arr = np.asarray(lengths)
    return {
        "min": int(arr.min()), "median": float(np.median(arr)), "mean": round(float(arr.mean()), 1),
        "p90": float(np.percentile(arr, 90)), "max": int(arr.max()),
    }


def histogram(lengths: Sequence[int]) -> dict[str, Any]:
    """Counts of lengths in power-of-two bins [2^k, 2^(k+1)), from 1 up to the longest."""
    top = max(lengths, default=1)
    n_bins = max(1, math.ceil(math.log2(max(top, 1) + 1)))
    edges = [2**k for k in range(n_bins + 1)]
    counts, _ = np.histogram(np.clip(np.asarray(lengths or [1]), 1, None), bins=edges)
    if not lengths:
        counts[:] = 0
    return {"unit": "characters", "edges": edges, "counts": [int(c) for c in counts]}


def measures(rows: Sequence[Row], steps: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Relevance, quality and diversity figures of the kept rows."""
    texts = [body(r) for r in rows]
    words: list[str] = []
    for t in texts:
        words += _TERM.findall(t.lower())
        if len(words) >= _SAMPLE_WORDS:
            break
    words = words[:_SAMPLE_WORDS]
    terms = Counter(w for w in words if w not in _STOP)
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    sample = texts[:5000]
    start = steps[0]["after"] if steps else len(rows)
    quality_removed = sum(s["removed"] for s in steps if s["step"].startswith("quality"))
    dup_removed = sum(s["removed"] for s in steps if "duplicate" in s["step"])
    chars = sum(len(t) for t in sample) or 1
    out: dict[str, Any] = {
        "relevance": {
            "top_terms": [[w, c] for w, c in terms.most_common(20)],
        },
        "quality": {
            "removed_by_quality_filters": quality_removed,
            "removed_share": round(1 - len(rows) / start, 4) if start else 0.0,
            "mean_symbol_ratio": round(float(np.mean([symbol_ratio(t) for t in sample])), 4) if sample else 0.0,
            "mean_letter_word_ratio": round(float(np.mean([alpha_word_ratio(t) for t in sample])), 4) if sample else 0.0,
            "non_ascii_share": round(sum(1 for t in sample for c in t if ord(c) > 127) / chars, 4),
        },
        "diversity": {
            "words_sampled": len(words),
            "distinct_words": len(set(words)),
            "type_token_ratio": round(len(set(words)) / len(words), 4) if words else 0.0,
            "distinct_trigram_share": round(len(set(trigrams)) / len(trigrams), 4) if trigrams else 0.0,
            "duplicates_removed": dup_removed,
            "duplicate_share": round(dup_removed / start, 4) if start else 0.0,
        },
    }
    if kind == "classification":
        counts = Counter(r["label"] for r in rows)
        total = sum(counts.values()) or 1
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
        out["diversity"]["label_balance"] = round(entropy / math.log2(len(counts)), 4) if len(counts) > 1 else 0.0
    return out


def tables(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The card as {title, columns, rows} tables for the CLI and the TUI."""
    counts = card["counts"]
    summary: list[list[Any]] = [
        ["type", card["type"]],
        ["source", card["source"]],
        ["rows read", counts["read"]],
        ["invalid rows dropped", counts["invalid"]],
        ["rows kept", counts["kept"]],
        ["train / val", f"{counts['train']} / {counts['val']}"],
        ["characters", card["characters"]],
        ["exact duplicates removed", card["duplicates"]["exact"]],
        ["near duplicates removed", card["duplicates"]["near"]],
    ]
    if card["duplicates"].get("val_overlap"):
        summary.append(["held-out rows also in train (removed)", card["duplicates"]["val_overlap"]])
    if card.get("tokens"):
        tok = card["tokens"]
        summary += [["tokens (train / val)", f"{tok['train']:,} / {tok['val']:,}"],
                    ["characters per token", tok["chars_per_token"]]]
    out = [{"title": f"Dataset card: {card['name']}", "columns": ["", "value"], "rows": summary}]
    out.append({
        "title": "Filters", "columns": ["step", "before", "removed", "after"],
        "rows": [[s["step"], s["before"], s["removed"], s["after"]] for s in card["filters"]],
    })
    lengths = card["lengths"]
    out.append({
        "title": "Length per row (characters)", "columns": ["min", "median", "mean", "p90", "max"],
        "rows": [[lengths[k] for k in ("min", "median", "mean", "p90", "max")]],
    })
    rel, qual, div = card["relevance"], card["quality"], card["diversity"]
    top = ", ".join(w for w, _ in rel["top_terms"][:8])
    questions = [
        ["relevance", "most frequent terms", top],
        ["quality", "removed by quality filters", qual["removed_by_quality_filters"]],
        ["quality", "share of rows removed (all steps)", qual["removed_share"]],
        ["quality", "mean symbol ratio", qual["mean_symbol_ratio"]],
        ["diversity", "distinct words / words (sample)", f"{div['distinct_words']:,} / {div['words_sampled']:,}"],
        ["diversity", "distinct word 3-grams share", div["distinct_trigram_share"]],
        ["diversity", "duplicates removed share", div["duplicate_share"]],
    ]
    if "label_balance" in div:
        questions.append(["diversity", "label balance (1 = even)", div["label_balance"]])
    out.append({"title": "Relevance, quality, diversity", "columns": ["question", "measure", "value"],
                "rows": questions})
    if card.get("label_counts"):
        out.append({
            "title": "Labels", "columns": ["label", "train", "val"],
            "rows": [[label, c["train"], c["val"]] for label, c in card["label_counts"].items()],
        })
    if card["invalid"]["total"]:
        out.append({
            "title": "Invalid rows dropped", "columns": ["reason", "rows"],
            "rows": [[r, n] for r, n in card["invalid"]["reasons"].items()],
        })
    return out
