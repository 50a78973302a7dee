"""WPO's pair weights (`loss.use_weighting`) and BCO's running reward shift δ (`loss.bco_delta`): hand-derived
values, the formula written again here in value and gradient, the state across micro-batches and processes, and the
config errors. TRL parity is in `test_losses_trl_parity.py`, the log-prob paths in `test_fast_paths.py`."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from dpokit.core.errors import ConfigError
from dpokit.lm.token_kl import log_sum_sq_probs
from dpokit.losses import LossInputs, LossParams, LossState, RunningMean, parse_objective, wpo_weights
from dpokit.losses.objective import validate_params


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_log_sum_sq_probs_hand_value():
    """p = (1/2, 1/4, 1/4): Σ p² = 1/4 + 1/16 + 1/16 = 3/8, log 3/8 = −0.9808292530; a uniform p over 4: log 1/4."""
    logp = torch.log(t(0.5, 0.25, 0.25))
    assert log_sum_sq_probs(logp).item() == pytest.approx(math.log(3 / 8))
    assert log_sum_sq_probs(torch.full((4,), math.log(0.25))).item() == pytest.approx(math.log(0.25))


def test_wpo_weights_hand_values():
    """Pair 1: chosen log π −2 over 2 tokens, Σ_t log Σp² −3: w̄_w = (−2 + 3)/2 = 0.5; rejected −6 over 3, −3:
    w̄_l = (−6 + 3)/3 = −1; w = exp(−0.5) = 0.6065306597 (below 1: the clamp leaves it).
    Pair 2: chosen −1 over 1, −2: w̄_w = 1; rejected −1 over 1, −1.5: w̄_l = 0.5; w = exp(1.5) = 4.4816890703,
    clamped to 1."""
    policy, sq, n = t(-2.0, -6.0, -1.0, -1.0).view(2, 2), t(-3.0, -3.0, -2.0, -1.5).view(2, 2), torch.tensor(
        [[2, 3], [1, 1]])
    torch.testing.assert_close(wpo_weights(policy, sq, n, clamp=False), t(0.6065306597, 4.4816890703))
    torch.testing.assert_close(wpo_weights(policy, sq, n), t(0.6065306597, 1.0))
    assert not wpo_weights(policy.requires_grad_(), sq, n).requires_grad


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("expr", ["sigmoid", "0.5*ipo + sft", "simpo", "bco_pair"])
def test_weighted_objective_value_and_gradient_match_the_formula(expr: str, clamp: bool):
    """L_i = w_i · Σ_terms, w from the plain sums (no gradient through w); float64 formula on the same numbers."""
    g = torch.Generator().manual_seed(5)
    n = torch.randint(1, 6, (6, 2), generator=g)
    policy = (-n * torch.rand(6, 2, generator=g)).requires_grad_()
    reference = -4 * torch.rand(6, 2, generator=g)
    sq = -n * torch.rand(6, 2, generator=g)  # log Σp² ≤ 0 per token; w̄ in (−1, 1): the pair weights straddle 1
    inputs = LossInputs(policy, n, reference, log_sum_sq_probs=sq)
    params = LossParams(beta=0.4)
    base = parse_objective(expr)
    weighted = replace(base, use_weighting=True, wpo_clamp=clamp)
    got = weighted(inputs, params).losses
    (grad,) = torch.autograd.grad(got.sum(), policy)
    plain = base(inputs, params).losses
    w = torch.exp(((policy.detach() - sq) / n).sum(-1))
    w = w.clamp(max=1) if clamp else w
    assert (w < 1).any() and (clamp or (w > 1).any())  # the unclamped case really has weights above 1
    torch.testing.assert_close(got, w * plain)
    (expected_grad,) = torch.autograd.grad((w * plain).sum(), policy)
    torch.testing.assert_close(grad, expected_grad)


def test_running_mean_hand_values():
    """Values 1, 2 (a micro-batch of 2 summing to 3), then 6 alone: means 1.5, then (1 + 2 + 6)/3 = 3."""
    m = RunningMean()
    m.update(3.0, 2.0)
    assert (m.mean, m.count) == (1.5, 2.0)
    m.update(6.0, 1.0)
    assert (m.mean, m.count) == (3.0, 3.0)
    m.update(0.0, 0.0)
    assert (m.mean, m.count) == (3.0, 3.0)


def bco_inputs(rewards_w: list[float], rewards_l: list[float], beta: float) -> LossInputs:
    """Reference-free inputs whose implicit rewards β·log π are the given ones."""
    policy = torch.tensor([rewards_w, rewards_l], dtype=torch.float64).T / beta
    return LossInputs(policy.clone().requires_grad_(), torch.ones_like(policy, dtype=torch.long))


def test_bco_delta_is_the_running_mean_of_micro_batch_means():
    """β = 0.5. Micro-batch 1: rewards w (1, 3), l (−1, 1): mean 1, δ = 1. Micro-batch 2: w (2), l (−4): mean −1,
    δ = (1 + (−1))/2 = 0 (each micro-batch counts once, as TRL's RunningMoments of a scalar).
    Loss of pair (2, −4) at δ = 0: −log σ(2) − log σ(4) = 0.1269280110 + 0.0181499279 = 0.1450779389;
    in micro-batch 1, pair (1, −1) at δ = 1: −log σ(0) − log σ(2) = 0.6931471806 + 0.1269280110 = 0.8200751916."""
    objective, params = parse_objective("bco_pair", reference_free=True), LossParams(beta=0.5, bco_delta="running")
    state = LossState()
    first = bco_inputs([1.0, 3.0], [-1.0, 1.0], 0.5)
    state.update(objective.statistics(first, params), lambda v: v)
    assert state.mean("bco_pair") == pytest.approx(1.0)
    assert objective(first, params, state).losses[0].item() == pytest.approx(0.8200751916)
    assert objective(first, params).losses[0].item() == pytest.approx(0.8200751916)  # no state: this batch's mean
    second = bco_inputs([2.0], [-4.0], 0.5)
    state.update(objective.statistics(second, params), lambda v: v)
    assert state.mean("bco_pair") == pytest.approx(0.0)
    assert objective(second, params, state).losses.item() == pytest.approx(0.1450779389)
    zero = objective(second, replace(params, bco_delta="zero"))
    assert zero.losses.item() == pytest.approx(0.1450779389)  # δ = 0 here too: the same number
    assert objective.statistics(second, replace(params, bco_delta="zero")) == {}


def test_bco_delta_gradient_treats_delta_as_a_constant():
    """∂L/∂log π_w = −β σ(−(r_w − δ)), ∂L/∂log π_l = β σ(r_l − δ): δ is detached, though it is a mean of the rewards."""
    objective, params = parse_objective("bco_pair", reference_free=True), LossParams(beta=0.5, bco_delta="running")
    inputs = bco_inputs([1.0, 3.0], [-1.0, 1.0], 0.5)
    (grad,) = torch.autograd.grad(objective(inputs, params).losses.sum(), inputs.policy_logps)
    r = inputs.policy_logps.detach() * 0.5
    expected = torch.stack([-0.5 * torch.sigmoid(-(r[:, 0] - 1.0)), 0.5 * torch.sigmoid(r[:, 1] - 1.0)], dim=1)
    torch.testing.assert_close(grad, expected)


def test_loss_state_sums_statistics_over_processes():
    """Two processes, one micro-batch each, means 1 and −1: both hold δ = 0 (TRL's get_global_statistics: the sum of
    the processes' means over their count), and a checkpoint's dict restores it exactly."""
    objective, params = parse_objective("bco_pair", reference_free=True), LossParams(beta=0.5, bco_delta="running")
    mine, theirs = bco_inputs([1.0, 3.0], [-1.0, 1.0], 0.5), bco_inputs([2.0], [-4.0], 0.5)
    other = [float(v) for v in objective.statistics(theirs, params)["bco_pair"]]
    state = LossState()
    state.update(objective.statistics(mine, params), lambda v: [a + b for a, b in zip(v, other, strict=True)])
    assert state.state_dict() == {"bco_pair": {"mean": 0.0, "count": 2.0}}
    restored = LossState()
    restored.load_state_dict(state.state_dict())
    assert restored.means == state.means


def test_bco_loss_with_delta_is_the_papers_formula():
    """The pure function at δ = 0.3, β = 1: −log σ(r_w − δ) − log σ(−(r_l − δ)) on (0.8, −0.2)."""
    from dpokit.losses import bco_loss

    got = bco_loss(t(0.8), t(-0.2), 1.0, 0.3)
    torch.testing.assert_close(got, -F.logsigmoid(t(0.5)) - F.logsigmoid(t(0.5)))


@pytest.mark.parametrize(("expr", "message"), [
    ("aot", "loss 'aot' does not have"),
    ("sigmoid + aot_unpaired", "loss 'aot_unpaired' does not have"),
    ("kto", "loss 'kto' does not have"),
    ("plackett_luce", "takes ranked lists"),
    ("tpo", "takes ranked lists"),
])
def test_use_weighting_is_refused_where_a_pair_has_no_loss_of_its_own(expr: str, message: str):
    with pytest.raises(ConfigError, match=f"^config key 'loss.use_weighting' .*{message}"):
        validate_params(parse_objective(expr), LossParams(use_weighting=True))


def test_bco_delta_choice_is_checked():
    with pytest.raises(ConfigError, match="^config key 'loss.bco_delta' must be one of zero, running, got 'mean'"):
        validate_params(parse_objective("bco_pair"), LossParams(bco_delta="mean"))
