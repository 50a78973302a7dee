"""A check shared by the local-LM judge tests (tiny model and SmolLM2): what each order of a judgment must hold."""

from __future__ import annotations

import math

import pytest


def check_letter_orders(judgments, count: int, min_letter_mass: float = 0.0) -> None:
    """Each judgment was scored model first, then baseline first; each order's p is the softmax over logp("A"),
    logp("B") (for the model's side), and the letters got at least `min_letter_mass` of the next-token mass."""
    assert len(judgments) == count
    for judgment in judgments:
        assert [o.model_first for o in judgment.orders] == [True, False] and judgment.parsed
        for order in judgment.orders:
            logp_a, logp_b = order.raw["logp_a"], order.raw["logp_b"]
            assert math.isfinite(logp_a) and math.isfinite(logp_b) and logp_a < 0 and logp_b < 0
            assert math.exp(logp_a) + math.exp(logp_b) > min_letter_mass, order.raw
            p_first = 1 / (1 + math.exp(logp_b - logp_a))
            assert 0.0 < order.p < 1.0
            assert order.p == pytest.approx(p_first if order.model_first else 1 - p_first, abs=1e-6)
