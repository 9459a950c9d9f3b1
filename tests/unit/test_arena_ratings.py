"""Arena ratings: Bradley–Terry on the Elo scale recovers known strengths from simulated votes,
and its bootstrap interval covers the truth about as often as a 95% interval should."""

from __future__ import annotations

import numpy as np
import pytest
from workbench_arena.match import parse_vote, pick_pair
from workbench_arena.ratings import cohen_kappa, fit, leaderboard, wilson

TRUE = np.array([1150.0, 1050.0, 950.0, 850.0])  # mean 1000, as the ratings are anchored
MODELS = ["m0", "m1", "m2", "m3"]


def simulate(rng: np.random.Generator, n: int, tie_share: float = 0.0) -> list[dict[str, str]]:
    """Votes on random pairs, each won with the Bradley–Terry probability of the true ratings."""
    votes = []
    for _ in range(n):
        i, j = rng.choice(len(TRUE), size=2, replace=False)
        p_left = 1.0 / (1.0 + 10 ** ((TRUE[j] - TRUE[i]) / 400))
        u = rng.random()
        vote = "tie" if u < tie_share else "left" if rng.random() < p_left else "right"
        votes.append({"model_left": MODELS[i], "model_right": MODELS[j], "vote": vote})
    return votes


def test_ratings_recover_the_order_and_intervals_cover_the_truth():
    rng = np.random.default_rng(7)
    covered, total = 0, 0
    for repeat in range(40):
        board = leaderboard(simulate(rng, 600), bootstrap=200, seed=repeat)
        assert [r.model for r in board] == MODELS
        assert np.mean([r.rating for r in board]) == pytest.approx(1000.0)
        for r in board:
            truth = TRUE[MODELS.index(r.model)]
            covered += r.ci_low <= truth <= r.ci_high
            total += 1
    # 160 intervals at a nominal 95%: the binomial spread puts the share well inside these bounds.
    assert 0.88 <= covered / total <= 0.995, f"{covered}/{total} intervals covered the truth"


def test_ties_count_half_and_counts_add_up():
    votes = ([{"model_left": "x", "model_right": "y", "vote": "left"}] * 3
             + [{"model_left": "y", "model_right": "x", "vote": "tie"}] * 2
             + [{"model_left": "y", "model_right": "x", "vote": "both_bad"}])
    x, y = leaderboard(votes, bootstrap=50)
    assert (x.model, x.wins, x.ties, x.losses, x.both_bad, x.votes) == ("x", 3, 3, 0, 1, 6)
    assert (y.wins, y.ties, y.losses) == (0, 3, 3)
    # x scored 4.5 of 6, plus the virtual tie each: p_x/p_y solves the MM fixed point; with only
    # ties the two are equal.
    assert x.rating > y.rating and x.rating + y.rating == pytest.approx(2000.0)
    even = fit(np.array([0, 1]), np.array([1, 0]), np.array([0.5, 0.5]), 2)
    assert even == pytest.approx([1000.0, 1000.0])


def test_a_model_with_only_wins_gets_a_finite_rating():
    votes = [{"model_left": "a", "model_right": "b", "vote": "left"}] * 20
    a, b = leaderboard(votes, bootstrap=20)
    assert np.isfinite([a.rating, b.rating, a.ci_low, a.ci_high]).all() and a.rating > b.rating + 300


def test_cohen_kappa_and_wilson_match_textbook_values():
    # Cohen's kappa, the two-rater example of Wikipedia's article: 20 yes/yes, 5 yes/no,
    # 10 no/yes, 15 no/no → kappa 0.4.
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    # Wilson interval for 8 of 10 at 95% (Newcombe 1998, table I, method 3): 0.4902–0.9433.
    low, high = wilson(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def test_votes_parse_from_keys_or_words_and_pairs_are_seeded():
    assert [parse_vote(w) for w in ("1", " Right ", "t", "both  bad", "B", "maybe")] == \
        ["left", "right", "tie", "both_bad", "both_bad", None]
    models = ["a", "b", "c"]
    first = pick_pair(models, 1234)
    assert pick_pair(list(reversed(models)), 1234) == first  # the seed alone decides
    sides = {(pick_pair(models, s).left, pick_pair(models, s).right) for s in range(200)}
    assert len(sides) == 6  # every pair, both ways round
