"""Loss tests: each hand-derived value is written out in the docstring, then asserted.

Notation: h = chosen_logratios − rejected_logratios; σ is the logistic function; log σ(−x) = log σ(x) − x.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpokit.core.errors import ConfigError
from dpokit.losses import (
    LOSSES,
    LossInputs,
    LossParams,
    Objective,
    hinge_loss,
    ipo_loss,
    kto_loss,
    log1mexp,
    orpo_loss,
    parse_objective,
    plackett_luce_loss,
    robust_loss,
    sft_loss,
    sigmoid_loss,
    simpo_loss,
    token_kl_loss,
    unlikelihood_loss,
    validate_params,
)

PAIRWISE = ["sigmoid", "ipo", "cdpo", "robust", "hinge", "unlikelihood", "simpo", "orpo", "kto", "sigmoid_norm",
            "exo_pair", "discopop", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down",
            "alphapo"]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def random_inputs(b: int = 4, k: int = 2, t_len: int = 5, seed: int = 0) -> tuple[LossInputs, torch.Tensor]:
    """Consistent inputs: sequence log-probs are the masked sums of leaf per-token log-probs (returned too)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t_len + 1, (b, k), generator=gen)
    mask = torch.arange(t_len) < lengths[..., None]
    token_logps = (-3 * torch.rand(b, k, t_len, generator=gen)).requires_grad_()
    masked = torch.where(mask, token_logps, torch.zeros(()))
    reference = masked.detach().sum(-1) + 0.5 * torch.randn(b, k, generator=gen)
    labels = torch.arange(b) % 2 == 0
    kl = (masked + 1.5).square().sum(-1)  # a stand-in for Σ_t KL_t: >= 0 and depends on the leaves
    inputs = LossInputs(masked.sum(-1), mask.sum(-1), reference, masked, mask, labels, kl)
    return inputs, token_logps


# --- pure functions, hand-computed ---------------------------------------------------------------------------------


def test_sigmoid_hand_value():
    """β = 0.1, chosen 1.5, rejected −0.5: h = 2, −log σ(0.2) = log(1 + e^−0.2) = 0.5981388694."""
    assert sigmoid_loss(t(1.5), t(-0.5), beta=0.1).item() == pytest.approx(0.5981388694)


def test_sigmoid_label_smoothing_hand_value():
    """β = 0.1, h = 2, ε = 0.1: 0.9·0.5981388694 + 0.1·(0.5981388694 + 0.2) = 0.6181388694."""
    assert sigmoid_loss(t(2.0), t(0.0), beta=0.1, label_smoothing=0.1).item() == pytest.approx(0.6181388694)


def test_ipo_hand_values():
    """β = 0.1, h = 2: (2 − 1/0.2)² = (−3)² = 9.  β = 0.5, h = 2: (2 − 1)² = 1."""
    assert ipo_loss(t(2.0), t(0.0), beta=0.1).item() == pytest.approx(9.0)
    assert ipo_loss(t(1.0), t(-1.0), beta=0.5).item() == pytest.approx(1.0)


def test_robust_hand_value():
    """β = 0.1, h = 2, ε = 0.1: [0.9·0.5981388694 − 0.1·0.7981388694] / 0.8 = 0.4585111 / 0.8 = 0.5731388694."""
    expected = (0.9 * 0.5981388694 - 0.1 * 0.7981388694) / 0.8
    assert expected == pytest.approx(0.5731388694)
    assert robust_loss(t(2.0), t(0.0), beta=0.1, label_smoothing=0.1).item() == pytest.approx(expected)


def test_robust_rejects_half():
    """ε = 0.5 makes 1 − 2ε = 0."""
    with pytest.raises(ValueError, match="label_smoothing"):
        robust_loss(t(2.0), t(0.0), beta=0.1, label_smoothing=0.5)


def test_hinge_hand_values():
    """β = 0.1: h = 2 → 1 − 0.2 = 0.8;  h = 20 → max(0, −1) = 0;  h = −5 → 1 + 0.5 = 1.5."""
    losses = hinge_loss(t(2.0, 20.0, -5.0), t(0.0, 0.0, 0.0), beta=0.1)
    torch.testing.assert_close(losses, t(0.8, 0.0, 1.5))


def test_plackett_luce_k3_hand_value():
    """β = 1, logratios (2, 1, 0):
    k=0: 2 − log(e² + e + 1) = 2 − 2.4076059644;  k=1: 1 − log(e + 1) = 1 − 1.3132616875.
    L = 2.4076059644 + 1.3132616875 − 3 = 0.7208676519."""
    expected = math.log(math.e**2 + math.e + 1) + math.log(math.e + 1) - 3
    assert expected == pytest.approx(0.7208676519)
    assert plackett_luce_loss(t(2.0, 1.0, 0.0)[None], beta=1.0).item() == pytest.approx(expected)


def test_plackett_luce_k2_equals_sigmoid():
    """K = 2: −[r_0 − log(e^r_0 + e^r_1)] = −log σ(r_0 − r_1), the DPO loss, at any inputs."""
    logratios = 5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = sigmoid_loss(logratios[:, 0], logratios[:, 1], beta=0.3)
    torch.testing.assert_close(plackett_luce_loss(logratios, beta=0.3), expected)


def test_plackett_luce_is_shift_invariant():
    """Adding c to every logratio of a row adds βc to each r_k and to each logsumexp: L is unchanged."""
    logratios = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(plackett_luce_loss(logratios + 7.0, 0.5), plackett_luce_loss(logratios, 0.5))


def test_sft_hand_value():
    """−(−6)/3 = 2;  0 tokens counts as 1: −(−1)/1 = 1."""
    torch.testing.assert_close(sft_loss(t(-6.0, -1.0), torch.tensor([3, 0])), t(2.0, 1.0))


def test_unlikelihood_hand_value():
    """Chosen tokens p = (0.5, 0.25): mean NLL = (0.6931471806 + 1.3862943611)/2 = 1.0397207708.
    Rejected tokens p = (0.5, padding): mean −log(1 − 0.5) = 0.6931471806.  α = 2:
    L = 1.0397207708 + 2·0.6931471806 = 2.4260151320."""
    chosen = t(math.log(0.5), math.log(0.25))[None]
    rejected = t(math.log(0.5), 0.0)[None]
    loss = unlikelihood_loss(chosen, rejected, torch.tensor([[True, True]]), torch.tensor([[True, False]]), alpha=2)
    assert loss.item() == pytest.approx(2.4260151320)


def test_unlikelihood_is_finite_at_certain_and_impossible_tokens():
    """Rejected log p = 0 (p = 1): −log(1 − p) clamps to −log1mexp(−1e-6) ≈ −log(1e-6) = 13.8155, finite, no NaN.
    Rejected log p = −1e4 (p ≈ 0): −log(1 − 0) = 0."""
    rejected = torch.tensor([[0.0], [-1e4]], requires_grad=True)
    chosen = torch.zeros(2, 1)
    mask = torch.ones(2, 1, dtype=torch.bool)
    loss = unlikelihood_loss(chosen, rejected, mask, mask, alpha=1.0)
    loss.sum().backward()
    assert loss[0].item() == pytest.approx(13.8155, abs=1e-3)
    assert loss[1].item() == 0.0
    assert torch.isfinite(rejected.grad).all()


def test_log1mexp_matches_naive_formula_where_naive_is_accurate():
    """log(1 − eˣ) in float64 on x in [−20, −1e-3], both sides of −ln 2."""
    x = -torch.logspace(-3, math.log10(20), 200, dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), torch.log(1 - torch.exp(x)))


def test_simpo_hand_value():
    """β = 2, γ = 0.5, avg_w = −1, avg_l = −1.5: −log σ(2·0.5 − 0.5) = −log σ(0.5) = 0.4740769842."""
    assert simpo_loss(t(-1.0), t(-1.5), beta=2.0, gamma=0.5).item() == pytest.approx(0.4740769842)


def test_orpo_hand_value():
    """avg_w = log 0.5 → odds 1;  avg_l = log 0.2 → odds 0.25;  log odds ratio = log 4, σ(log 4) = 0.8.
    λ = 0.1: L = −log 0.5 − 0.1·log 0.8 = 0.6931471806 + 0.0223143551 = 0.7154615357."""
    assert orpo_loss(t(math.log(0.5)), t(math.log(0.2)), lam=0.1).item() == pytest.approx(0.7154615357)


def test_orpo_finite_at_probability_one():
    """avg = 0 (P = 1) would give infinite odds; log1mexp's clamp keeps loss and gradient finite."""
    avg = torch.zeros(2, requires_grad=True)
    loss = orpo_loss(avg[:1], avg[1:], lam=0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(avg.grad).all()


def test_kto_pure_hand_values():
    """β = 1, z = 0.5; r = (1, −0.5), labels (desirable, undesirable), w_U = 2:
    desirable: 1 − σ(1 − 0.5) = 1 − 0.6224593312 = 0.3775406688;
    undesirable: 2·(1 − σ(0.5 + 0.5)) = 2·(1 − 0.7310585786) = 0.5378828427."""
    loss = kto_loss(t(1.0, -0.5), torch.tensor([True, False]), 0.5, beta=1.0, undesirable_weight=2.0)
    torch.testing.assert_close(loss, t(0.3775406688, 0.5378828427))


# --- limits and the paper's gradient --------------------------------------------------------------------------------


def test_zero_smoothing_limits_equal_dpo():
    """ε = 0: cDPO's extra term vanishes and rDPO's denominator is 1, so both are −log σ(β h)."""
    chosen, rejected = torch.randn(2, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    dpo = -F.logsigmoid(0.2 * (chosen - rejected))
    torch.testing.assert_close(sigmoid_loss(chosen, rejected, 0.2, label_smoothing=0.0), dpo)
    torch.testing.assert_close(robust_loss(chosen, rejected, 0.2, label_smoothing=0.0), dpo)


def test_sigmoid_gradient_matches_paper():
    """DPO eq. 7's gradient: ∇L = −β σ(r̂_l − r̂_w) (∇log π_w − ∇log π_l), r̂ = β (log π − log πref).
    So ∂L/∂log π_w = −β σ(r̂_l − r̂_w) and ∂L/∂log π_l = +β σ(r̂_l − r̂_w)."""
    beta = 0.3
    policy_w, policy_l = t(-4.0, -10.0, -2.0).requires_grad_(), t(-6.0, -3.0, -2.5).requires_grad_()
    ref_w, ref_l = t(-5.0, -9.0, -2.0), t(-5.5, -4.0, -3.0)
    sigmoid_loss(policy_w - ref_w, policy_l - ref_l, beta).sum().backward()
    weight = torch.sigmoid(beta * (policy_l - ref_l) - beta * (policy_w - ref_w)).detach()
    torch.testing.assert_close(policy_w.grad, -beta * weight)
    torch.testing.assert_close(policy_l.grad, beta * weight)


# --- registry and objective -----------------------------------------------------------------------------------------


def test_token_kl_loss_hand_value():
    """Example 0: KL sums (0.3, 0.9) over (2, 4) tokens: (0.3 + 0.9) / 6 = 0.2.  Example 1: (0, 1.5) over (1, 2):
    1.5 / 3 = 0.5.  Chosen and rejected tokens weigh the same."""
    kl = torch.stack([t(0.3, 0.9), t(0.0, 1.5)])
    torch.testing.assert_close(token_kl_loss(kl, torch.tensor([[2, 4], [1, 2]])), t(0.2, 0.5))


def test_kl_term_is_the_weighted_per_token_kl_and_declares_a_live_reference():
    """sigmoid + 0.1·kl = L_DPO + 0.1 · Σ KL / Σ tokens per example; `kl` needs the reference's distributions."""
    inputs, _ = random_inputs(k=3)
    out = parse_objective("plackett_luce + 0.1*kl")(inputs, LossParams())
    pl = LOSSES["plackett_luce"].fn(inputs, LossParams(), False)
    per_token = inputs.kl.sum(-1) / inputs.num_tokens.sum(-1)
    torch.testing.assert_close(out.losses, pl.losses + 0.1 * per_token)
    assert [name for name, spec in LOSSES.items() if spec.needs_reference_distributions] == ["kl"]
    assert parse_objective("sigmoid + 0.1*kl").needs_reference_distributions
    assert not parse_objective("sigmoid + 0.1*sft").needs_reference_distributions
    with pytest.raises(ValueError, match="loss 'kl' needs kl of shape"):
        parse_objective("kl")(LossInputs(inputs.policy_logps, inputs.num_tokens), LossParams())


def test_kl_term_refuses_a_reference_free_objective():
    with pytest.raises(ConfigError, match="^loss.name: loss 'kl' measures the distance to the reference model"):
        parse_objective("simpo + 0.1*kl", reference_free=True)


def test_registry_keys_match_spec_names():
    assert set(LOSSES) == {*PAIRWISE, "plackett_luce", "sft", "kl", "tpo"}
    assert all(spec.name == name for name, spec in LOSSES.items())


def test_kto_registry_clamps_kl_at_zero():
    """β = 1, reference 0.  Mismatched column r' = (−1, −3): mean −2 → z = clamp(−2, 0) = 0.
    desirable r = 1: 1 − σ(1) = 0.2689414214;  undesirable r = −0.5: 1 − σ(0.5) = 0.3775406688."""
    policy = torch.stack([t(1.0, -0.5), t(-1.0, -3.0)], dim=1)  # columns: own completion, mismatched completion
    inputs = LossInputs(policy, torch.ones(2, 2), torch.zeros(2, 2), labels=t(1, 0) > 0)
    out = LOSSES["kto"].fn(inputs, LossParams(beta=1.0), False)
    torch.testing.assert_close(out.losses, t(0.2689414214, 0.3775406688))


def test_kto_registry_positive_kl_is_detached():
    """Mismatched r' = (1, 2): z = 1.5.  desirable r = 1: 1 − σ(−0.5) = 0.6224593312;
    undesirable r = −0.5: 1 − σ(1.5 + 0.5) = 0.1192029220.  No gradient reaches the mismatched column."""
    policy = torch.stack([t(1.0, -0.5), t(1.0, 2.0)], dim=1).requires_grad_()
    inputs = LossInputs(policy, torch.ones(2, 2), torch.zeros(2, 2), labels=t(1, 0) > 0)
    out = LOSSES["kto"].fn(inputs, LossParams(beta=1.0), False)
    torch.testing.assert_close(out.losses, t(0.6224593312, 0.1192029220))
    out.losses.sum().backward()
    assert (policy.grad[:, 1] == 0).all() and (policy.grad[:, 0] != 0).all()


def test_reference_free_uses_policy_logps_alone():
    """Reference-free: logratio = log πθ(y|x), whatever reference_logps holds; no reference is requested."""
    inputs, _ = random_inputs()
    objective = parse_objective("sigmoid", reference_free=True)
    policy = inputs.policy_logps.detach()
    expected = sigmoid_loss(policy[:, 0], policy[:, 1], beta=0.1)
    torch.testing.assert_close(objective(inputs, LossParams()).losses.detach(), expected)
    torch.testing.assert_close(objective(inputs, LossParams()).rewards, 0.1 * policy)
    assert not objective.needs_reference and parse_objective("sigmoid").needs_reference


def test_missing_reference_is_a_clear_error():
    inputs, _ = random_inputs()
    no_reference = LossInputs(inputs.policy_logps, inputs.num_tokens)
    with pytest.raises(ValueError, match="needs reference_logps"):
        parse_objective("sigmoid")(no_reference, LossParams())
    parse_objective("simpo")(no_reference, LossParams())  # reference-free by construction


def test_objective_is_the_weighted_sum_and_takes_first_terms_rewards():
    """RPO: L = L_sigmoid + 0.5·L_sft per example; rewards are DPO's β·logratios."""
    inputs, _ = random_inputs()
    params = LossParams(beta=0.2)
    out = parse_objective("sigmoid + 0.5*sft")(inputs, params)
    dpo = LOSSES["sigmoid"].fn(inputs, params, False)
    sft = LOSSES["sft"].fn(inputs, params, False)
    torch.testing.assert_close(out.losses, dpo.losses + 0.5 * sft.losses)
    torch.testing.assert_close(out.rewards, dpo.rewards)


def test_cdpo_is_sigmoid_with_smoothing():
    inputs, _ = random_inputs()
    params = LossParams(label_smoothing=0.2)
    lr = (inputs.policy_logps - inputs.reference_logps).detach()
    expected = sigmoid_loss(lr[:, 0], lr[:, 1], 0.1, label_smoothing=0.2)
    torch.testing.assert_close(LOSSES["cdpo"].fn(inputs, params, False).losses.detach(), expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_runs_with_finite_loss_and_gradient(name: str):
    """Each entry on consistent random inputs (K = 2, or the K it takes; token log-probs, labels): finite (B,) losses,
    (B, K) detached rewards, and a finite, non-zero gradient on the per-token policy log-probs."""
    k = LOSSES[name].num_responses or 2
    inputs, token_logps = random_inputs(b=4, k=k)
    params = LossParams(label_smoothing=0.1)
    out = LOSSES[name].fn(inputs, params, False)
    assert out.losses.shape == (4,) and out.rewards.shape == (4, k)
    assert not out.rewards.requires_grad
    assert torch.isfinite(out.losses).all() and torch.isfinite(out.rewards).all()
    out.losses.mean().backward()
    assert torch.isfinite(token_logps.grad).all() and token_logps.grad.abs().sum() > 0


def test_plackett_luce_accepts_ranked_lists():
    inputs, _ = random_inputs(k=3)
    out = parse_objective("plackett_luce + 0.1*sft")(inputs, LossParams())
    assert out.losses.shape == (4,) and out.rewards.shape == (4, 3)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_losses_refuse_ranked_lists(name: str):
    inputs, _ = random_inputs(k=3)
    with pytest.raises(ValueError, match="takes pairs"):
        LOSSES[name].fn(inputs, LossParams(label_smoothing=0.1), False)


def test_losses_compute_in_float32_for_bf16_inputs():
    inputs, _ = random_inputs()
    bf16 = LossInputs(inputs.policy_logps.bfloat16(), inputs.num_tokens, inputs.reference_logps.bfloat16())
    out = parse_objective("sigmoid + 0.5*sft")(bf16, LossParams())
    assert out.losses.dtype == torch.float32 and out.rewards.dtype == torch.float32


@pytest.mark.parametrize(
    ("expr", "reference", "ranked", "unpaired", "chosen_only"),
    [
        ("sigmoid", True, False, False, False),
        ("simpo", False, False, False, False),
        ("plackett_luce + 0.1*sft", True, True, False, False),
        ("plackett_luce + sigmoid", True, False, False, False),
        ("sft + unlikelihood", False, False, False, False),
        ("kto", True, False, True, False),
        ("sft", False, True, False, True),
        ("2*sft", False, True, False, True),
        ("sigmoid + 0.1*kl", True, False, False, False),
        ("simpo + 0.1*kl", True, False, False, False),
        ("sft + kl", True, True, False, False),
    ],
)
def test_objective_flags(expr: str, reference: bool, ranked: bool, unpaired: bool, chosen_only: bool):
    """What the trainer asks instead of comparing names; chosen_only holds when every term reads only column 0."""
    objective = parse_objective(expr)
    assert (objective.needs_reference, objective.ranked) == (reference, ranked)
    assert (objective.unpaired, objective.chosen_only) == (unpaired, chosen_only)


def test_chosen_only_is_declared_by_the_registry_and_honest():
    """Only sft declares chosen_only, and its loss indeed ignores every response after the first (column 0)."""
    assert [name for name, spec in LOSSES.items() if spec.chosen_only] == ["sft"]
    inputs = LossInputs(policy_logps=t(-3.0, -1.0, -7.0).view(1, 3), num_tokens=torch.tensor([[3, 2, 4]]))
    changed = LossInputs(policy_logps=t(-3.0, -9.0, -0.5).view(1, 3), num_tokens=torch.tensor([[3, 5, 1]]))
    out, out_changed = LOSSES["sft"].fn(inputs, LossParams(), False), LOSSES["sft"].fn(changed, LossParams(), False)
    torch.testing.assert_close(out.losses, out_changed.losses)
    torch.testing.assert_close(out.losses, t(1.0))  # −(−3) / 3 tokens


# --- parsing and validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "text"),
    [("sigmoid", "sigmoid"), ("sigmoid+0.5*sft", "sigmoid + 0.5*sft"), ("ipo + 1e-1 * sft", "ipo + 0.1*sft")],
)
def test_parse_objective_round_trips(expr: str, text: str):
    objective = parse_objective(expr)
    assert str(objective) == text
    assert parse_objective(str(objective)) == objective


def test_parse_objective_weights():
    objective = parse_objective(" 2 * ipo + 1e-1*sft ")
    assert [(w, spec.name) for w, spec in objective.terms] == [(2.0, "ipo"), (0.1, "sft")]
    assert isinstance(objective, Objective) and not objective.reference_free


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("dpo", "unknown loss 'dpo'; known losses: alphapo, aot, aot_unpaired, apo_down, apo_zero, bco_pair, cdpo"),
        ("sigmoid + -0.5*sft", "must be a finite number > 0"),
        ("sigmoid + 0*sft", "must be a finite number > 0"),
        ("sigmoid + inf*sft", "must be a finite number > 0"),
        ("sigmoid + abc*sft", "'abc' is not a number"),
        ("sigmoid +", "cannot parse term ''"),
        ("sigmoid sft", "cannot parse term 'sigmoid sft'"),
        ("", "empty loss expression"),
        ("sigmoid + sigmoid", "sigmoid appears more than once"),
        ("kto + 0.5*sft", "mixes unpaired losses"),
    ],
)
def test_parse_objective_errors(expr: str, message: str):
    with pytest.raises(ConfigError, match=f"^loss.name: .*{message.replace('*', '.')}"):
        parse_objective(expr)


def test_validate_params_accepts_defaults():
    for name in sorted(set(LOSSES) - {"cdpo", "exo_pair"}):
        validate_params(parse_objective(name), LossParams())
    validate_params(parse_objective("cdpo"), LossParams(label_smoothing=0.1))
    validate_params(parse_objective("exo_pair"), LossParams(label_smoothing=1e-3))


@pytest.mark.parametrize(
    ("expr", "params", "message"),
    [
        ("sigmoid", LossParams(beta=-1.0), "loss.beta' must be > 0, got -1.0"),
        ("sigmoid", LossParams(beta=0.0), "loss.beta' must be > 0, got 0.0"),
        ("sigmoid", LossParams(beta=math.inf), "loss.beta' must be > 0, got inf"),
        ("robust", LossParams(label_smoothing=0.5), r"loss.label_smoothing' must be in \[0, 0.5\), got 0.5"),
        ("sigmoid", LossParams(label_smoothing=-0.1), r"loss.label_smoothing' must be in \[0, 0.5\), got -0.1"),
        ("cdpo", LossParams(), r"loss.label_smoothing' must be in \(0, 0.5\) for cdpo, got 0.0"),
        ("unlikelihood", LossParams(unlikelihood_alpha=-1.0), "loss.unlikelihood_alpha' must be >= 0, got -1.0"),
        ("orpo", LossParams(orpo_lambda=-0.1), "loss.orpo_lambda' must be >= 0, got -0.1"),
        ("kto", LossParams(kto_undesirable_weight=0.0), "loss.kto_undesirable_weight' must be > 0, got 0.0"),
        ("simpo", LossParams(simpo_gamma=math.nan), "loss.simpo_gamma' must be finite, got nan"),
    ],
)
def test_validate_params_errors(expr: str, params: LossParams, message: str):
    """The one place the loss hyper-parameters' ranges are checked; the message names the config key."""
    with pytest.raises(ConfigError, match=f"^config key '{message}$"):
        validate_params(parse_objective(expr), params)
