"""The losses TRL names beyond DPO's first ones: hand-derived values in the docstrings, then value and gradient of each
registry entry against its formula written out again here, at odd shapes in fp32, with and without a reference.

Notation: r = β·logratio; log σ(x) = −log(1 + e^−x); σ(0.5) = 0.6224593312, σ(1) = 0.7310585786.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpokit.core.errors import ConfigError
from dpokit.losses import (
    LOSSES,
    LossInputs,
    LossParams,
    alphapo_loss,
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    batch_token_nll,
    bco_loss,
    discopop_loss,
    exo_loss,
    f_divergence_scores,
    ld_weighted_logps,
    nca_loss,
    parse_objective,
    sppo_hard_loss,
    tpo_loss,
    validate_params,
)
from dpokit.losses.objective import objective_from_config
from dpokit.trainer.config import LossConfig


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def logsig(x):
    return -torch.log1p(torch.exp(-x))


# --- hand values ---------------------------------------------------------------------------------------------------


def test_anchored_hand_values():
    """β = 0.5, logratios w = 1, lo = −1: r_w = 0.5, r_l = −0.5.
    nca: −log σ(0.5) − ½ log σ(−0.5) − ½ log σ(0.5) = 0.4740769842 + ½·0.9740769842 + ½·0.4740769842 = 1.1981539684.
    bco: −log σ(0.5) − log σ(0.5) = 0.9481539684.
    apo_zero: 1 − σ(0.5) + σ(−0.5) = 0.7550813376.   apo_down: σ(0.5) + 1 − σ(1) = 0.8914007526."""
    w, lo = t(1.0), t(-1.0)
    assert nca_loss(w, lo, 0.5).item() == pytest.approx(1.1981539684)
    assert bco_loss(w, lo, 0.5).item() == pytest.approx(0.9481539684)
    assert apo_zero_loss(w, lo, 0.5).item() == pytest.approx(0.7550813376)
    assert apo_down_loss(w, lo, 0.5).item() == pytest.approx(0.8914007526)


def test_sppo_hard_hand_value():
    """β = 0.5: targets ±1/(2β) = ±1.  w = 2, lo = 0.5: (2 − 1)² + (0.5 + 1)² = 1 + 2.25 = 3.25; at (1, −1): 0."""
    assert sppo_hard_loss(t(2.0, 1.0), t(0.5, -1.0), 0.5).tolist() == pytest.approx([3.25, 0.0])


def test_exo_hand_value_and_minimum():
    """β h = 1, ε = 0.1: q = σ(1) = 0.7310585786;
    L = q (log q − log 0.9) + (1 − q)(log(1 − q) − log 0.1) = −0.1519888 + 0.2660709 = 0.1140821077.
    The minimum 0 is at q = 1 − ε, i.e. β h = log(0.9/0.1) = log 9."""
    assert exo_loss(t(1.0), t(0.0), 1.0, 0.1).item() == pytest.approx(0.1140821077)
    assert exo_loss(t(math.log(9)), t(0.0), 1.0, 0.1).item() == pytest.approx(0.0, abs=1e-12)


def test_discopop_hand_values():
    """τ = 0.05: at ρ = 1, m = σ(20) ≈ 1: L ≈ e^−1 = 0.3678794411; at ρ = −1, m ≈ 0: L ≈ −log σ(−1) = 1.3132616904
    (the other part weighs σ(−20) = 2e-9)."""
    assert discopop_loss(t(1.0, -1.0), t(0.0, 0.0), 1.0, 0.05).tolist() == pytest.approx([0.3678794411,
                                                                                            1.3132616904])


def test_alphapo_hand_value_and_simpo_limit():
    """α = 0.5: r(log 0.5) = (1 − √2)/0.5 = −0.8284271247; r(log 0.25) = (1 − 2)/0.5 = −2; margin 1.1715728753.
    β = 2, γ = 0.5: −log σ(2·1.1715728753 − 0.5) = 0.1469694804.  α = 0 is SimPO: −log σ(β Δavg − γ)."""
    assert alphapo_loss(t(math.log(0.5)), t(math.log(0.25)), 2.0, 0.5, 0.5).item() == pytest.approx(0.1469694804)
    simpo = -logsig(2.0 * (math.log(0.5) - math.log(0.25)) - 0.5 + t(0.0))
    assert alphapo_loss(t(math.log(0.5)), t(math.log(0.25)), 2.0, 0.5, 0.0).item() == pytest.approx(simpo.item())


def test_aot_sorts_over_the_batch():
    """Policy margins (3, −1, 1) sort to (−1, 1, 3), reference margins (0, 2, −2) to (−2, 0, 2): every sorted
    difference is 1, so each loss is −log σ(1) = 0.3132616875 (unsorted, two of them would be −log σ(3)).
    Unpaired: chosen (0.5, −1, 2) → (−1, 0.5, 2), rejected (1, −2, 0) → (−2, 0, 1): differences (1, 0.5, 1)."""
    torch.testing.assert_close(aot_loss(t(3.0, -1.0, 1.0), t(0.0, 2.0, -2.0), 1.0), t(*[0.3132616875] * 3))
    expected = -logsig(t(1.0, 0.5, 1.0))
    torch.testing.assert_close(aot_unpaired_loss(t(0.5, -1.0, 2.0), t(1.0, -2.0, 0.0), 1.0), expected)


def test_f_divergence_scores_hand_values():
    """u = 2 (log-ratio log 2): reverse_kl log 2; forward_kl 1 − 1/2 = 0.5; js log(2·2/3) = 0.2876820725;
    alpha (a = 0.5): (2^−0.5 − 1)/(−0.5) = 0.5857864376; a = 1 falls back to log u."""
    x = t(math.log(2))
    assert f_divergence_scores(x, "reverse_kl").item() == pytest.approx(math.log(2))
    assert f_divergence_scores(x, "forward_kl").item() == pytest.approx(0.5)
    assert f_divergence_scores(x, "js_divergence").item() == pytest.approx(0.2876820725)
    assert f_divergence_scores(x, "alpha_divergence", 0.5).item() == pytest.approx(0.5857864376)
    assert f_divergence_scores(x, "alpha_divergence", 1.0).item() == pytest.approx(math.log(2))


def test_sigmoid_norm_and_ipo_per_token_hand_values():
    """Summed log-ratios 3 over 3 tokens and −2 over 4: per token 1 and −0.5, h = 1.5.
    sigmoid_norm, β = 1: −log σ(1.5) = 0.2014132780.  ipo, β = 0.5: (1.5 − 1)² = 0.25; summed form: (5 − 1)² = 16."""
    inputs = LossInputs(t(3.0, -2.0)[None], torch.tensor([[3, 4]]), torch.zeros(1, 2, dtype=torch.float64))
    assert LOSSES["sigmoid_norm"].fn(inputs, LossParams(beta=1.0), False).losses.item() == pytest.approx(0.2014132780)
    assert LOSSES["ipo"].fn(inputs, LossParams(beta=0.5), False).losses.item() == pytest.approx(0.25)
    summed = LOSSES["ipo"].fn(inputs, LossParams(beta=0.5, ipo_per_token=False), False)
    assert summed.losses.item() == pytest.approx(16.0)


def test_ld_weighted_logps_hand_value():
    """Chosen tokens (−1, −2, −3), rejected (−1, −1): shared length 2; α = 0.5:
    chosen −1 − 2 + 0.5·(−3) = −4.5, rejected −2 (no tail).  α = 1: the plain sums −6, −2."""
    tokens = t(-1.0, -2.0, -3.0, -1.0, -1.0, 0.0).view(1, 2, 3)
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    torch.testing.assert_close(ld_weighted_logps(tokens, mask, 0.5), t(-4.5, -2.0)[None])
    torch.testing.assert_close(ld_weighted_logps(tokens, mask, 1.0), t(-6.0, -2.0)[None])


def test_batch_token_nll_and_tpo_hand_values():
    """sft as TRL: log-probs (−6, −1) over (3, 1) tokens: the batch's NLL 7/4 for each example (mean 7/4).
    TPO, β = 0.5, α = 1: gold NLL 2, chosen −2, rejected −4: −log σ(1) + 2 = 2.3132616875."""
    torch.testing.assert_close(batch_token_nll(t(-6.0, -1.0), torch.tensor([3, 1])), t(1.75, 1.75))
    assert tpo_loss(t(-2.0), t(-4.0), t(2.0), 0.5, 1.0).item() == pytest.approx(2.3132616875)
    inputs = LossInputs(t(-6.0, -2.0, -4.0)[None], torch.tensor([[3, 2, 2]]))
    assert LOSSES["tpo"].fn(inputs, LossParams(beta=0.5), False).losses.item() == pytest.approx(2.3132616875)


# --- value and gradient of every registry entry against its formula, written again here ---------------------------

def _bco_delta(w, lo, p):
    return p.beta * torch.cat([w, lo]).mean().detach() if p.bco_delta == "running" else 0.0


def _formulas():
    """name -> L(lw, ll, n_w, n_l, params) from the per-response log-ratios (B,) and token counts; float64."""
    s, ls = torch.sigmoid, logsig
    return {
        "sigmoid_norm": lambda w, lo, nw, nl, p: -ls(p.beta * (w / nw - lo / nl)),
        "ipo": lambda w, lo, nw, nl, p: (w / nw - lo / nl - 1 / (2 * p.beta)) ** 2,
        "exo_pair": lambda w, lo, nw, nl, p: (s(p.beta * (w - lo)) * torch.log(s(p.beta * (w - lo)) / 0.9)
                                             + s(p.beta * (lo - w)) * torch.log(s(p.beta * (lo - w)) / 0.1)),
        "discopop": lambda w, lo, nw, nl, p: ((1 - s(p.beta * (w - lo) / p.discopop_tau)) * -ls(p.beta * (w - lo))
                                             + s(p.beta * (w - lo) / p.discopop_tau) * torch.exp(-p.beta * (w - lo))),
        "nca_pair": lambda w, lo, nw, nl, p: -ls(p.beta * w) - ls(-p.beta * w) / 2 - ls(-p.beta * lo) / 2,
        # δ: with no running state, the batch's own mean reward over chosen and rejected, detached
        # δ = 0 by default (TRL 1.x); `bco_delta=running` without a trainer's state: this batch's mean reward
        "bco_pair": lambda w, lo, nw, nl, p: (-ls(p.beta * w - _bco_delta(w, lo, p)) - ls(-(p.beta * lo
                                                                                            - _bco_delta(w, lo, p)))),
        "sppo_hard": lambda w, lo, nw, nl, p: (w - 1 / (2 * p.beta)) ** 2 + (lo + 1 / (2 * p.beta)) ** 2,
        "apo_zero": lambda w, lo, nw, nl, p: 1 - s(p.beta * w) + s(p.beta * lo),
        "apo_down": lambda w, lo, nw, nl, p: s(p.beta * w) + 1 - s(p.beta * (w - lo)),
        "aot_unpaired": lambda w, lo, nw, nl, p: (-0.9 * ls(p.beta * (w.sort().values - lo.sort().values))
                                                 - 0.1 * ls(-p.beta * (w.sort().values - lo.sort().values))),
    }


@pytest.mark.parametrize("reference_free", [False, True])
@pytest.mark.parametrize("name", [*sorted(_formulas()), "bco_pair/running"])
def test_registry_value_and_gradient_match_the_formula(name: str, reference_free: bool):
    """B = 7 pairs, fp32 leaves; the formula in float64 on the same numbers (reference-free: log-ratio = log πθ)."""
    g = torch.Generator().manual_seed(11)
    policy = (-4 * torch.rand(7, 2, generator=g)).requires_grad_()
    reference = -4 * torch.rand(7, 2, generator=g)
    n = torch.randint(1, 9, (7, 2), generator=g)
    name, _, delta = name.partition("/")
    params = LossParams(beta=0.7, label_smoothing=0.1, discopop_tau=0.3, bco_delta=delta or "zero")
    out = LOSSES[name].fn(LossInputs(policy, n, reference), params, reference_free)
    (grad,) = torch.autograd.grad(out.losses.sum(), policy)
    assert out.losses.dtype == torch.float32
    leaf = policy.detach().double().requires_grad_()
    ratios = leaf - (0 if reference_free else reference.double())
    expected = _formulas()[name](ratios[:, 0], ratios[:, 1], n[:, 0].double(), n[:, 1].double(), params)
    (expected_grad,) = torch.autograd.grad(expected.sum(), leaf)
    torch.testing.assert_close(out.losses.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-6)


def test_anchored_gradients_match_hand_derivatives():
    """∂/∂logratio, with r = β·logratio:  nca: w: β(−σ(−r_w) + ½σ(r_w)), lo: ½βσ(r_l);  bco: w: −βσ(−r_w), lo: βσ(r_l);
    sppo_hard: 2(h_w − 1/(2β)), 2(h_l + 1/(2β));  exo: w: β q(1 − q)(β h − log((1 − ε)/ε)) with q = σ(β h)."""
    beta, eps = 0.7, 0.1
    w, lo = t(0.3, -1.2, 2.0).requires_grad_(), t(-0.4, 0.9, 1.5).requires_grad_()
    s = torch.sigmoid
    cases = [
        (nca_loss(w, lo, beta), beta * (-s(-beta * w) + s(beta * w) / 2), beta * s(beta * lo) / 2),
        (bco_loss(w, lo, beta), -beta * s(-beta * w), beta * s(beta * lo)),
        (sppo_hard_loss(w, lo, beta), 2 * (w - 1 / (2 * beta)), 2 * (lo + 1 / (2 * beta))),
    ]
    q = s(beta * (w - lo))
    exo_w = beta * q * (1 - q) * (beta * (w - lo) - math.log((1 - eps) / eps))
    cases.append((exo_loss(w, lo, beta, eps), exo_w, -exo_w))
    for loss, dw, dl in cases:
        gw, gl = torch.autograd.grad(loss.sum(), (w, lo))
        torch.testing.assert_close(gw, dw.detach())
        torch.testing.assert_close(gl, dl.detach())


def test_aot_registry_takes_margins_of_policy_and_reference():
    """aot on (B, 2): policy margin log π(y_w) − log π(y_l) against the reference margin; reference-free: 0."""
    policy = t(-1.0, -4.0, -3.0, -2.0, -2.0, -2.5).view(3, 2)  # margins 3, −1, 0.5
    reference = t(-2.0, -2.0, -1.0, -3.0, -3.0, -1.0).view(3, 2)  # margins 0, 2, −2
    out = LOSSES["aot"].fn(LossInputs(policy, torch.ones(3, 2), reference), LossParams(beta=1.0), False)
    torch.testing.assert_close(out.losses, aot_loss(t(3.0, -1.0, 0.5), t(0.0, 2.0, -2.0), 1.0))
    free = LOSSES["aot"].fn(LossInputs(policy, torch.ones(3, 2), reference), LossParams(beta=1.0), True)
    torch.testing.assert_close(free.losses, -logsig(t(-1.0, 0.5, 3.0)))


def test_ld_alpha_objective_reweights_reference_losses_only():
    """With ld_alpha, sigmoid reads the weighted sums of policy and reference; sft (no reference) the plain sums."""
    tokens = t(-1.0, -2.0, -3.0, -1.0, -1.0, 0.0).view(1, 2, 3)
    ref_tokens = t(-0.5, -0.5, -0.5, -2.0, -1.0, 0.0).view(1, 2, 3)
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    inputs = LossInputs(tokens.sum(-1), mask.sum(-1), ref_tokens.sum(-1), tokens, mask,
                        reference_token_logps=ref_tokens)
    cfg = LossConfig(name="sigmoid + sft", ld_alpha=0.5, beta=1.0)
    objective, params = objective_from_config(cfg)
    assert objective.ld_alpha == 0.5 and objective.needs_reference_token_logps
    out = objective(inputs, params)
    h = (-4.5 - -1.25) - (-2.0 - -3.0)  # weighted: chosen −4.5 vs ref −1.25; rejected −2 vs −3
    sft = 6.0 / 3  # plain sum, one example: its per-token NLL
    assert out.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-h))) + sft)


@pytest.mark.parametrize(
    ("expr", "params", "message"),
    [
        ("exo_pair", LossParams(), r"loss.label_smoothing' must be in \(0, 0.5\) for exo_pair"),
        ("discopop", LossParams(discopop_tau=0.0), "loss.discopop_tau' must be > 0"),
        ("sigmoid", LossParams(ld_alpha=1.5), r"loss.ld_alpha' must be in \[0, 1\]"),
        ("kto", LossParams(ld_alpha=0.5), "loss.ld_alpha' down-weights the longer response"),
        ("sigmoid + 0.1*kl", LossParams(ld_alpha=0.5), "loss.ld_alpha' down-weights the longer response"),
        ("tpo", LossParams(tpo_alpha=-1.0), "loss.tpo_alpha' must be >= 0"),
        ("simpo", LossParams(f_divergence_type="js_divergence"), "needs losses built on the chosen − rejected"),
        ("sigmoid", LossParams(f_divergence_type="tv"), "loss.f_divergence_type' must be one of"),
        ("sft", LossParams(sft_mean="tokens"), "loss.sft_mean' must be one of"),
    ],
)
def test_new_params_are_validated(expr: str, params: LossParams, message: str):
    with pytest.raises(ConfigError, match=message):
        validate_params(parse_objective(expr), params)


def test_f_divergence_is_accepted_by_margin_losses_and_sft():
    names = [name for name, spec in LOSSES.items() if spec.f_divergence]
    assert names == ["sigmoid", "ipo", "cdpo", "robust", "hinge", "sigmoid_norm", "exo_pair", "discopop", "sft"]
    validate_params(parse_objective("sigmoid + 0.5*sft"), LossParams(f_divergence_type="forward_kl"))


def test_tpo_takes_triples():
    inputs = LossInputs(t(-1.0, -2.0)[None], torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match="takes triples"):
        LOSSES["tpo"].fn(inputs, LossParams(), False)
    assert parse_objective("tpo").num_responses == 3 and parse_objective("tpo").ranked
