"""Bradley–Terry ratings over arena votes, on the Elo scale, with bootstrap intervals; and how
well a judge's votes agree with people's.

Model i beats model j with probability p_i / (p_i + p_j). The strengths are fitted by maximum
likelihood (Newton's method), with a tie counting as half a win for each side; "both bad" says nothing
about which answer was better, so it counts as a tie too, as in Chatbot Arena. Every model also
plays one virtual tie against a reference of strength 1, a weak prior that keeps a model with
only wins (or only losses) finite and changes little once it has a few real votes. Ratings are
400·log10(p), shifted so their mean is 1000. The 95% interval comes from refitting on votes
resampled with replacement (percentile bootstrap, seeded); all resamples are fitted at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Score of the left model for each stored verdict.
SCORES = {"left": 1.0, "right": 0.0, "tie": 0.5, "both_bad": 0.5}
PRIOR_GAMES = 1.0
SCALE = 400.0 / math.log(10.0)
MEAN = 1000.0


@dataclass
class Rating:
    model: str
    rating: float
    ci_low: float
    ci_high: float
    votes: int
    wins: int
    ties: int
    losses: int
    both_bad: int

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(self).items()}


def fit(left: np.ndarray, right: np.ndarray, score: np.ndarray, n_models: int,
        max_iter: int = 100, tol: float = 1e-9) -> np.ndarray:
    """Elo-scale ratings (mean 1000) for one or many vote sets at once.

    `left`, `right` (model indices) and `score` (1: left won, ½: tie, 0: right won) have shape
    (votes,) or (sets, votes); the result has shape (n_models,) or (sets, n_models). Newton's
    method on the log-strengths: the log-likelihood is concave (strictly, with the prior), and
    a handful of steps reach what MM iterations need thousands for.
    """
    single = left.ndim == 1
    left, right, score = (np.atleast_2d(a) for a in (left, right, score))
    sets = left.shape[0]
    base = np.arange(sets)[:, None] * n_models
    size = sets * n_models * n_models

    def count(i: np.ndarray, j: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Sum of `weights` into [s, i, j]."""
        return np.bincount(((base + i) * n_models + j).ravel(), weights.ravel(), size)

    # won[s, i, j]: i's score against j
    won = (count(left, right, score) + count(right, left, 1.0 - score)).reshape(sets, n_models, n_models)
    games = won + won.transpose(0, 2, 1)
    points = won.sum(axis=2) + PRIOR_GAMES / 2
    theta = np.zeros((sets, n_models))  # natural log of each strength
    for _ in range(max_iter):
        p_win = 1.0 / (1.0 + np.exp(theta[:, None, :] - theta[:, :, None]))  # P(i beats j)
        p_ref = 1.0 / (1.0 + np.exp(-theta))  # P(i beats the reference)
        grad = points - (games * p_win).sum(axis=2) - PRIOR_GAMES * p_ref
        info = games * p_win * (1.0 - p_win)
        hess = info - np.eye(n_models) * (info.sum(axis=2) + PRIOR_GAMES * p_ref * (1 - p_ref))[:, :, None]
        step = np.linalg.solve(hess, grad[:, :, None])[:, :, 0]
        # Far from the optimum a full step can overshoot; at most 2 nats (about 350 Elo) a step.
        step *= np.minimum(1.0, 2.0 / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-12))
        theta -= step
        if np.abs(step).max() < tol:
            break
    ratings = SCALE * theta
    ratings += MEAN - ratings.mean(axis=1, keepdims=True)
    return ratings[0] if single else ratings


def leaderboard(votes: Sequence[dict[str, Any]], *, bootstrap: int = 1000, seed: int = 0) -> list[Rating]:
    """One row per model that has votes, best first."""
    votes = [v for v in votes if v["vote"] in SCORES]
    if not votes:
        return []
    models = sorted({v["model_left"] for v in votes} | {v["model_right"] for v in votes})
    index = {m: i for i, m in enumerate(models)}
    left = np.array([index[v["model_left"]] for v in votes])
    right = np.array([index[v["model_right"]] for v in votes])
    score = np.array([SCORES[v["vote"]] for v in votes])
    ratings = fit(left, right, score, len(models))
    low, high = np.full(len(models), np.nan), np.full(len(models), np.nan)
    if bootstrap > 0:
        pick = np.random.default_rng(seed).integers(0, len(votes), size=(bootstrap, len(votes)))
        boot = fit(left[pick], right[pick], score[pick], len(models))
        low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    rows = []
    for m, i in index.items():
        mine = [v for v in votes if i in (index[v["model_left"]], index[v["model_right"]])]
        won = sum(SCORES[v["vote"]] == (1.0 if index[v["model_left"]] == i else 0.0) for v in mine)
        tied = sum(SCORES[v["vote"]] == 0.5 for v in mine)
        rows.append(Rating(m, float(ratings[i]), float(low[i]), float(high[i]), len(mine), won, tied,
                           len(mine) - won - tied, sum(v["vote"] == "both_bad" for v in mine)))
    return sorted(rows, key=lambda r: -r.rating)


# ----------------------------------------------------------------------------------------------
# agreement between two voters


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion k/n (sound near 0 and 1, unlike k/n ± 2·se)."""
    if n == 0:
        return (0.0, 1.0)
    phat = k / n
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Agreement beyond chance between two raters' labels of the same items: 1 is perfect, 0 is
    what two raters guessing with their own label frequencies would reach."""
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    expected = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in labels)
    if expected == 1.0:
        return float("nan")  # both raters always gave the same one label: nothing to compare
    return (observed - expected) / (1 - expected)
