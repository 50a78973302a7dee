"""How scored completions become preferences (`rewards.preferences.label_group`), for every `labels` setting."""

from __future__ import annotations

import math
import random

import pytest

from dpokit.rewards.preferences import label_group, ordered_pairs, usable

TEXTS = ["a", "b", "c", "d"]


def test_best_worst_is_one_pair_of_the_extremes_and_a_tie_when_all_score_the_same():
    labelled = label_group("p", TEXTS, [0.5, 2.0, -1.0, 2.0], "best_worst", random.Random(0))
    assert labelled.records == [{"prompt": "p", "chosen": "b", "rejected": "c"}]  # the first of the two bests
    assert (labelled.pairs, labelled.tied) == (1, 0)
    flat = label_group("p", TEXTS, [1.0] * 4, "best_worst", random.Random(0))
    assert (flat.records, flat.pairs, flat.tied) == ([], 0, 1)


def test_all_pairs_keeps_every_strict_pair_and_counts_the_ties():
    """Scores 3, 1, 1, 0: of the 6 pairs, (b, c) ties; the other 5 are written best first."""
    labelled = label_group("p", TEXTS, [3.0, 1.0, 1.0, 0.0], "all_pairs", random.Random(0))
    pairs = [(r["chosen"], r["rejected"]) for r in labelled.records]
    assert pairs == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert (labelled.pairs, labelled.tied) == (5, 1)
    assert ordered_pairs([3.0, 1.0, 1.0, 0.0]) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]


def test_ranked_is_one_list_best_first_with_its_scores():
    labelled = label_group("p", TEXTS, [0.0, 2.0, 1.0, 3.0], "ranked", random.Random(0))
    assert labelled.records == [{"prompt": "p", "responses": ["d", "b", "c", "a"], "scores": [3.0, 2.0, 1.0, 0.0]}]
    assert (labelled.pairs, labelled.tied) == (6, 0)


def test_sampled_draws_each_winner_with_the_bradley_terry_probability():
    """r_a − r_b = 1: a wins with σ(1) = 0.7311. Over 20,000 draws the frequency is within 4 standard errors
    (sd of the mean = sqrt(p(1−p)/n) = 0.0031); equal rewards are a fair coin."""
    rng, n = random.Random(7), 20_000
    wins = sum(label_group("p", ["a", "b"], [1.0, 0.0], "sampled", rng).records[0]["chosen"] == "a" for _ in range(n))
    p = 1 / (1 + math.exp(-1.0))
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    coin = sum(label_group("p", ["a", "b"], [2.0, 2.0], "sampled", rng).records[0]["chosen"] == "a" for _ in range(n))
    assert abs(coin / n - 0.5) < 4 * math.sqrt(0.25 / n)
    labelled = label_group("p", TEXTS, [0.0, 1.0, 2.0, 3.0], "sampled", rng)
    assert (len(labelled.records), labelled.pairs, labelled.tied) == (6, 6, 0)  # every pair, none left out


@pytest.mark.parametrize("texts", [["a", "a", "b"], ["a", " ", "b"], ["a", "", "b"]])
def test_a_group_with_an_empty_or_repeated_completion_is_not_usable(texts):
    assert not usable(texts)
    assert usable(["a", "b", "c"])

