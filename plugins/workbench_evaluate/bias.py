"""Bias probes: how much more likely a model finds a sentence about one group than the same
sentence about another, with intervals that say whether the difference is more than noise.

Each sentence is scored whole, after the tokenizer's beginning-of-text token (BOS, or
end-of-text where there is none: what a pretraining document follows), through the same
`logprobs` both engines answer for perplexity and multiple choice. The gap of a pair is
log p(a) − log p(b) in nats. Per attribute:

- the mean gap (summed over tokens, per token, and over the ending both sentences share, which
  leaves out how likely the swapped words are themselves), with a 95% percentile bootstrap
  interval that resamples templates, since pairs made from one sentence are not independent;
- its quantiles and a histogram;
- the a-rate: the share of pairs whose `a` sentence is the more likely (a tie counts half),
  with a Wilson interval over pairs;
- the flip rate (defined in `flip_counts`), with a bootstrap interval over templates;
- each group's mean gap toward it, when the attribute has more than two groups.

A comparison adds, for each model after the first, the change of each attribute's mean gap,
with a paired bootstrap interval (the same pairs, the same template resamples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from workbench_evaluate.biasfile import BiasPair
from workbench_evaluate.scores import wilson_interval

BOOTSTRAP = 2000
SEED = 0
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = 9
BARS = "▁▂▃▄▅▆▇█"
CHUNK = 32  # pairs per call to the engine, and per progress tick


def shared_ending(text_a: str, text_b: str, ids_a: list[int], ids_b: list[int], decode: Callable[[list[int]], str]) -> int:
    """How many final tokens the two sentences share after the swapped words: equal ids whose
    text lies within the sentences' common ending, taken from a word boundary on (father and
    mother share "ther", which belongs to the swapped word)."""
    n = 0
    while n < min(len(text_a), len(text_b)) and text_a[-1 - n] == text_b[-1 - n]:
        n += 1
    while n and text_a[-n].isalnum() and any(len(t) > n and t[-n - 1].isalnum() for t in (text_a, text_b)):
        n -= 1
    k = 0
    while k < min(len(ids_a), len(ids_b)) and ids_a[-1 - k] == ids_b[-1 - k]:
        k += 1
    while k and len(decode(ids_a[-k:])) > n:
        k -= 1
    return k


def score_pairs(subject: Any, pairs: Sequence[BiasPair], tick: Callable[[int], None]) -> dict[str, list[float]]:
    """log p(sentence) and its token count for both sides of every pair, and the log-probability
    of the ending both sides share (the words after the swap, given everything before them)."""
    tok = subject.tokenizer
    prefix = next(([int(t)] for t in (tok.bos_id, tok.eos_id) if t is not None and int(t) >= 0), [])
    context = subject.backend.context
    out: dict[str, list[float]] = {key: [] for key in ("logprob_a", "logprob_b", "tokens_a", "tokens_b",
                                                       "ending_a", "ending_b", "ending_tokens")}
    for i in range(0, len(pairs), CHUNK):
        part = pairs[i:i + CHUNK]
        items, endings = [], []
        for pair in part:
            ids_a, ids_b = subject.encode(pair.a, bos=False), subject.encode(pair.b, bos=False)
            endings.append(shared_ending(pair.a, pair.b, ids_a, ids_b, subject.decode))
            items += [((prefix + ids_a)[-context:], 1), ((prefix + ids_b)[-context:], 1)]
        scored = subject.backend.logprobs(items)
        for k, lp_a, lp_b in zip(endings, scored[0::2], scored[1::2], strict=True):
            k = min(k, len(lp_a), len(lp_b))
            for side, lp in (("a", lp_a), ("b", lp_b)):
                out[f"logprob_{side}"].append(float(lp.sum()))
                out[f"tokens_{side}"].append(len(lp))
                out[f"ending_{side}"].append(float(lp[len(lp) - k:].sum()))
            out["ending_tokens"].append(k)
        tick(len(part))
    return out


# ---------------------------------------------------------------------------------------------
# statistics


class Units:
    """The pairs of one attribute, grouped into templates, and the bootstrap's template weights:
    row r of `weights` says how often each template was drawn in resample r."""

    def __init__(self, pairs: Sequence[BiasPair]):
        names = sorted({p.template for p in pairs})
        index = {name: i for i, name in enumerate(names)}
        if len(names) < 2:  # one template tells nothing of the spread between templates
            index, names = {}, [p.where for p in pairs]
        self.n = len(names)
        self.of_pair = np.array([index.get(p.template, i) for i, p in enumerate(pairs)], dtype=np.int64)
        rng = np.random.default_rng(SEED)
        self.weights = rng.multinomial(self.n, np.full(self.n, 1 / self.n), size=BOOTSTRAP).astype(np.float64)

    def mean(self, values: np.ndarray, rows: np.ndarray | None = None) -> dict[str, float]:
        """Mean of `values` (one per pair, or per selected row in `rows`) and its bootstrap interval."""
        units = self.of_pair if rows is None else self.of_pair[rows]
        sums = np.bincount(units, weights=values, minlength=self.n)
        counts = np.bincount(units, minlength=self.n).astype(np.float64)
        num, den = self.weights @ sums, self.weights @ counts
        draws = num[den > 0] / den[den > 0]
        low, high = np.quantile(draws, [0.025, 0.975])
        mean = float(sums.sum() / counts.sum())
        # the percentile interval may miss the estimate by rounding when every draw is equal
        return {"mean": mean, "ci_low": min(mean, float(low)), "ci_high": max(mean, float(high))}


def flip_counts(pairs: Sequence[BiasPair], gaps: np.ndarray, units: Units, weights: np.ndarray) -> np.ndarray:
    """The flip rate under each row of template weights.

    Cells are (pair of groups, template): the template's pairs for those two groups, whose mean
    gap says which group the model prefers in that sentence. A pair of groups prefers, overall,
    the group preferred in most of its cells; a cell that prefers the other group is a flip (a
    cell with a gap of exactly zero counts half). The flip rate is flips / cells over all the
    attribute's pairs of groups: 0 when each pair of groups is ordered the same way in every
    sentence, near one half when the sentence, not the group, decides.
    """
    keys = sorted({tuple(sorted((p.group_a, p.group_b))) for p in pairs})
    col = {k: i for i, k in enumerate(keys)}
    sums = np.zeros((units.n, len(keys)))
    counts = np.zeros((units.n, len(keys)))
    for row, (pair, gap) in enumerate(zip(pairs, gaps, strict=True)):
        key = tuple(sorted((pair.group_a, pair.group_b)))
        sign = 1.0 if key[0] == pair.group_a else -1.0  # oriented toward the group first by name
        sums[units.of_pair[row], col[key]] += sign * gap
        counts[units.of_pair[row], col[key]] += 1
    present = counts > 0
    cell = np.divide(sums, counts, out=np.zeros_like(sums), where=present)
    pos = weights @ (present & (cell > 0))
    neg = weights @ (present & (cell < 0))
    zero = weights @ (present & (cell == 0))
    cells = (pos + neg + zero).sum(axis=-1)
    flips = (np.minimum(pos, neg) + zero / 2).sum(axis=-1)
    return np.divide(flips, cells, out=np.full_like(flips, np.nan), where=cells > 0)


def flip_chance(pairs: Sequence[BiasPair]) -> float:
    """The flip rate expected when each cell's preference is a coin toss: E[min(X, k − X)] / k
    for X ~ Binomial(k, ½) over a pair of groups' k cells, pooled. Below ½ because the majority
    is taken from the same cells."""
    cells: dict[tuple[str, ...], set[str]] = {}
    for p in pairs:
        cells.setdefault(tuple(sorted((p.group_a, p.group_b))), set()).add(p.template)
    expected = total = 0.0
    for templates in cells.values():
        k = len(templates)
        expected += sum(math.comb(k, x) * min(x, k - x) for x in range(k + 1)) / 2**k
        total += k
    return expected / total if total else math.nan


def histogram(gaps: np.ndarray) -> dict[str, Any]:
    """Counts in HIST_BINS bins symmetric around zero (the middle bin holds it), and as bars."""
    edge = float(np.abs(gaps).max()) or 1.0
    counts, edges = np.histogram(gaps, bins=HIST_BINS, range=(-edge, edge))
    top = max(1, int(counts.max()))
    bars = "".join("·" if c == 0 else BARS[min(len(BARS) - 1, int(c * len(BARS) / (top + 1)))] for c in counts)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "bars": f"{bars} ±{edge:.3g}"}


def summarize(pairs: Sequence[BiasPair], scores: dict[str, list[float]]) -> dict[str, Any]:
    """Every figure per attribute, in the order the attributes first appear in the file."""
    lp_a, lp_b = np.asarray(scores["logprob_a"]), np.asarray(scores["logprob_b"])
    n_a = np.maximum(1, np.asarray(scores["tokens_a"], dtype=np.float64))
    n_b = np.maximum(1, np.asarray(scores["tokens_b"], dtype=np.float64))
    gaps, per_token = lp_a - lp_b, lp_a / n_a - lp_b / n_b
    ending = np.asarray(scores["ending_a"]) - np.asarray(scores["ending_b"])
    out: dict[str, Any] = {}
    for attribute in dict.fromkeys(p.attribute for p in pairs):
        rows = np.array([i for i, p in enumerate(pairs) if p.attribute == attribute])
        sub = [pairs[i] for i in rows]
        units = Units(sub)
        g = gaps[rows]
        wins = float((g > 0).sum() + 0.5 * (g == 0).sum())
        low, high = wilson_interval(wins, len(g))
        flips = flip_counts(sub, g, units, units.weights)
        flip = float(flip_counts(sub, g, units, np.ones((1, units.n)))[0])
        f_low, f_high = np.nanquantile(flips, [0.025, 0.975]) if np.isfinite(flips).any() else (math.nan, math.nan)
        groups = list(dict.fromkeys(x for p in sub for x in (p.group_a, p.group_b)))
        by_group = {}
        if len(groups) > 2:
            for group in groups:
                picked = np.array([i for i, p in enumerate(sub) if group in (p.group_a, p.group_b)])
                toward = np.array([g[i] if sub[i].group_a == group else -g[i] for i in picked])
                by_group[group] = {"n": len(picked), **units.mean(toward, picked)}
        out[attribute] = {
            "n": len(sub), "templates": units.n, "groups": groups,
            "gap": units.mean(g), "gap_per_token": units.mean(per_token[rows]),
            "gap_ending": units.mean(ending[rows]),
            "quantiles": dict(zip([f"q{round(q * 100):02d}" for q in QUANTILES],
                                  [float(v) for v in np.quantile(g, QUANTILES)], strict=True)),
            "histogram": histogram(g),
            "a_rate": {"mean": wins / len(g), "ci_low": low, "ci_high": high},
            "flip_rate": {"mean": flip, "ci_low": min(flip, float(f_low)), "ci_high": max(flip, float(f_high)),
                          "chance": flip_chance(sub)},
            "by_group": by_group,
        }
    return out


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The figures merged into the model's metrics, per attribute."""
    out: dict[str, float] = {}
    for attribute, s in summary.items():
        out[f"bias_gap[{attribute}]"] = s["gap"]["mean"]
        out[f"bias_gap_ci_low[{attribute}]"] = s["gap"]["ci_low"]
        out[f"bias_gap_ci_high[{attribute}]"] = s["gap"]["ci_high"]
        out[f"bias_gap_ending[{attribute}]"] = s["gap_ending"]["mean"]
        out[f"bias_a_rate[{attribute}]"] = s["a_rate"]["mean"]
        out[f"bias_flip_rate[{attribute}]"] = s["flip_rate"]["mean"]
    return out


def change(pairs: Sequence[BiasPair], base: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, Any]:
    """Each attribute's mean gap in `other` minus that in `base`, on the same pairs, with a paired
    bootstrap interval (the per-pair differences resampled by template)."""
    diff = ((np.asarray(other["logprob_a"]) - np.asarray(other["logprob_b"]))
            - (np.asarray(base["logprob_a"]) - np.asarray(base["logprob_b"])))
    out: dict[str, Any] = {}
    for attribute in dict.fromkeys(p.attribute for p in pairs):
        rows = np.array([i for i, p in enumerate(pairs) if p.attribute == attribute])
        out[attribute] = Units([pairs[i] for i in rows]).mean(diff[rows])
    return out


# ---------------------------------------------------------------------------------------------
# tables


def _ci(v: dict[str, float], pct: bool = False) -> str:
    if pct:
        return f"{v['mean']:.1%} [{v['ci_low']:.1%}, {v['ci_high']:.1%}]"
    return f"{v['mean']:+.3g} [{v['ci_low']:+.3g}, {v['ci_high']:+.3g}]"


def tables(models: list[tuple[str, str]], names: list[str], summaries: dict[str, dict[str, Any]],
           changes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The bias tables: headline figures, distributions, groups, and changes against the first model."""
    first = summaries[models[0][0]]
    out = []
    rows = []
    for attribute, s in first.items():
        compared = " vs ".join(s["groups"]) if len(s["groups"]) == 2 else f"{len(s['groups'])} groups"
        label = f"{attribute} ({compared}, {s['n']} pairs)"
        rows.append([label, "gap a−b, nats", *[_ci(summaries[m][attribute]["gap"]) for m, _ in models]])
        rows.append(["", "gap per token", *[_ci(summaries[m][attribute]["gap_per_token"]) for m, _ in models]])
        rows.append(["", "gap on the shared ending", *[_ci(summaries[m][attribute]["gap_ending"]) for m, _ in models]])
        rows.append(["", "a preferred", *[_ci(summaries[m][attribute]["a_rate"], pct=True) for m, _ in models]])
        rows.append(["", f"flip rate (chance {s['flip_rate']['chance']:.0%})",
                     *[_ci(summaries[m][attribute]["flip_rate"], pct=True) for m, _ in models]])
    out.append({"title": "Bias probes: log p(a) − log p(b) per attribute, 95% CI", "columns": ["attribute", "measure", *names],
                "rows": rows})

    keys = [f"q{round(q * 100):02d}" for q in QUANTILES]
    dist = [[name, attribute, *[summaries[m][attribute]["quantiles"][k] for k in keys],
             summaries[m][attribute]["histogram"]["bars"]]
            for (m, _), name in zip(models, names, strict=True) for attribute in first]
    out.append({"title": "Bias gap distribution (nats; histogram symmetric around 0)",
                "columns": ["model", "attribute", *keys, "histogram"], "rows": dist})

    groups = [[attribute, group, s["by_group"][group]["n"],
               *[_ci(summaries[m][attribute]["by_group"][group]) for m, _ in models]]
              for attribute, s in first.items() for group in s["by_group"]]
    if groups:
        out.append({"title": "Bias by group: mean gap toward the group against the others, 95% CI",
                    "columns": ["attribute", "group", "pairs", *names], "rows": groups})

    if changes:
        others = [(m, n) for (m, _), n in zip(models, names, strict=True) if m in changes]
        rows = [[attribute, *[_ci(changes[m][attribute]) for m, _ in others]] for attribute in first]
        out.append({"title": f"Bias gap change against {names[0]} (same pairs, paired 95% CI)",
                    "columns": ["attribute", *[n for _, n in others]], "rows": rows})
    return out
