"""Win-rate arithmetic: scores, ties, standard error, the Wilson interval, combining two orders, position bias."""

from __future__ import annotations

import math

import pytest

from dpokit.eval.judges import Judgment, Order, combine, verdict_of
from dpokit.eval.winrate import position_bias, rate_of, wilson


def test_wilson_matches_the_closed_form_and_known_values():
    # Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n); 95%: z = 1.95996...
    z = 1.959963984540054
    for p, n in [(0.3, 20), (0.9, 7), (0.5, 1), (0.0, 12)]:
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson(p, n) == pytest.approx((max(0, centre - half), min(1, centre + half)))
    # published value: 8 successes of 10 -> [0.4902, 0.9433] (e.g. Newcombe 1998, method 3)
    assert wilson(0.8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson(1.0, 5)  # never collapses to a point at the edge
    assert high == 1.0 and 0.5 < low < 0.6
    assert wilson(0.5, 0) == (0.0, 1.0)


def test_rate_counts_ties_as_half_and_its_standard_error_is_the_sample_one():
    judgments = [Judgment(v) for v in ["model"] * 5 + ["tie"] * 2 + ["baseline"] * 3]
    r = rate_of(judgments)
    scores = [1.0] * 5 + [0.5] * 2 + [0.0] * 3
    mean = sum(scores) / 10
    sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / 9)
    assert (r.rate, r.ties, r.n) == (0.6, 2, 10)
    assert r.se == pytest.approx(sd / math.sqrt(10))
    assert (r.low, r.high) == pytest.approx(wilson(0.6, 10))
    one = rate_of([Judgment("model")])
    assert (one.rate, one.se, one.n) == (1.0, 0.0, 1)


@pytest.mark.parametrize(("ab", "ba", "verdict", "biased"), [
    (1.0, 1.0, "model", False),      # model first: A; baseline first: B -> the model both times
    (0.0, 0.0, "baseline", False),
    (1.0, 0.0, "tie", True),         # "A" both times: the judge followed the position
    (0.0, 1.0, "tie", True),         # "B" both times
    (None, 1.0, "model", None),      # one unparsed order: the other decides, and it is counted as unparsed
    (None, None, "tie", None),       # nothing parsed: a tie, still counted
    (0.8, 0.7, "model", False),      # probabilities (a local LM judge) average
    (0.8, 0.1, "baseline", True),
])
def test_two_orders_combine_into_one_verdict(ab, ba, verdict, biased):
    judgment = combine([Order(True, ab), Order(False, ba)])
    assert judgment.verdict == verdict
    assert judgment.position_biased is biased
    assert judgment.parsed == (ab is not None and ba is not None)


def test_position_bias_rate_is_over_the_comparisons_with_two_parsed_orders():
    judgments = [combine([Order(True, 1.0), Order(False, 0.0)]),   # biased
                 combine([Order(True, 1.0), Order(False, 1.0)]),   # consistent
                 combine([Order(True, None), Order(False, 0.0)]),  # not countable
                 combine([Order(True, 0.0), Order(False, 0.0)])]   # consistent
    assert position_bias(judgments) == pytest.approx(1 / 3)
    assert position_bias([Judgment("model")]) is None  # a reward judge has no orders
    assert verdict_of(0.5) == "tie"


def test_a_reward_judge_scores_each_distinct_response_once():
    from dpokit.eval.judges import Comparison, RewardJudge
    from dpokit.rewards.sources import Reward

    asked: list[tuple] = []

    def length(prompts, texts):
        asked.extend(zip(prompts, texts, strict=True))
        return [float(len(t)) for t in texts]

    judge = RewardJudge(Reward("length", length))
    chat = [{"role": "user", "content": "hi"}]
    first = judge.judge([Comparison("p", "long answer", "short"), Comparison(chat, "x", "short"),
                         Comparison("p", "short", "short")])
    assert [j.verdict for j in first] == ["model", "baseline", "tie"]
    assert len(asked) == 4  # ("p", "long answer"), ("p", "short"), (chat, "x"), (chat, "short")
    second = judge.judge([Comparison("p", "tiny", "short"), Comparison(chat, "x", "short")])
    assert [j.verdict for j in second] == ["baseline", "baseline"]
    assert asked[4:] == [("p", "tiny")]  # the baselines and the repeated completion were remembered
    assert second[0].raw == {"model_reward": 4.0, "baseline_reward": 5.0}
