"""Where theory gives the optimum, minimising the expected loss under Bradley–Terry preferences reaches it.

One prompt, N one-token responses (so per-token means equal sums), πref and rewards r fixed; the policy is a free
softmax over the N responses. Every unordered pair {i, j} is drawn equally often and labelled i ≻ j with probability
p_ij = σ(r_i − r_j). The expected loss Σ_{i<j} [p_ij L(i ≻ j) + p_ji L(j ≻ i)] is minimised by L-BFGS in float64.

- IPO (Azar et al. 2023, arXiv 2310.12036): least squares of h_ij onto (p_ij − ½)/β gives
  π*(y) ∝ πref(y) exp(p*(y ≻ μ)/β), p*(y_i ≻ μ) = mean_j p_ij (p_ii = ½), μ uniform.
- f-DPO (Wang et al. 2023, arXiv 2309.16240, Thm. 1): −log σ(β (f'(u_i) − f'(u_j))) is minimised when
  β (f'(u_i) − f'(u_j)) = r_i − r_j, so u_i = πθ/πref = (f')⁻¹((r_i + c)/β), c normalising Σ πref u = 1
  (reverse KL: π* ∝ πref exp(r/β), DPO's optimum).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dpokit.losses import LOSSES, LossInputs, LossParams

N, BETA = 5, 0.8
PREF = torch.tensor([0.1, 0.3, 0.15, 0.25, 0.2], dtype=torch.float64)
R = torch.tensor([0.4, -0.5, 0.9, 0.0, -0.2], dtype=torch.float64)
PAIRS = list(itertools.combinations(range(N), 2))


def minimise(name: str, params: LossParams) -> torch.Tensor:
    """π minimising the expected loss of registry entry `name` over all labelled pairs."""
    i = torch.tensor([a for a, b in PAIRS] + [b for a, b in PAIRS])  # winner
    j = torch.tensor([b for a, b in PAIRS] + [a for a, b in PAIRS])  # loser
    weight = torch.sigmoid(R[i] - R[j])
    logits = PREF.log().clone().requires_grad_()
    optimizer = torch.optim.LBFGS([logits], lr=1, max_iter=2000, tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logp = torch.log_softmax(logits, 0)
        inputs = LossInputs(torch.stack([logp[i], logp[j]], 1), torch.ones(len(i), 2),
                            torch.stack([PREF.log()[i], PREF.log()[j]], 1))
        loss = (weight * LOSSES[name].fn(inputs, params, False).losses).sum()
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    return torch.softmax(logits.detach(), 0)


def test_ipo_reaches_its_least_squares_optimum():
    p = torch.sigmoid(R[:, None] - R[None, :])  # p_ii = ½
    expected = torch.softmax(PREF.log() + p.mean(1) / BETA, 0)
    torch.testing.assert_close(minimise("ipo", LossParams(beta=BETA)), expected, atol=1e-7, rtol=1e-6)


def inverse_f_prime(score: torch.Tensor, kind: str, a: float) -> torch.Tensor:
    """log u with f'(u) = score, for f' = log u | 1 − 1/u | log(2u/(1+u)) | (u^(a−1) − 1)/(a − 1)."""
    if kind == "reverse_kl":
        return score
    if kind == "forward_kl":
        return -torch.log(1 - score)
    if kind == "js_divergence":
        q = torch.exp(score) / 2  # u/(1+u)
        return torch.log(q / (1 - q))
    return torch.log(1 + (a - 1) * score) / (a - 1)


def f_optimum(kind: str, a: float) -> torch.Tensor:
    """π* = πref·u*, u*_i = (f')⁻¹((r_i + c)/β), c found by bisection so that Σ π* = 1."""
    def total(c: float) -> float:
        return float((PREF * inverse_f_prime((R + c) / BETA, kind, a).exp()).sum())

    top = {"reverse_kl": 50.0, "forward_kl": BETA, "js_divergence": BETA * math.log(2),
           "alpha_divergence": BETA / (1 - a) if a < 1 else 50.0}[kind]  # β·sup f'
    upper = top - R.max().item() - 1e-12
    lo, hi = -50.0, upper
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < 1 else (lo, mid)
    return PREF * inverse_f_prime((R + lo) / BETA, kind, a).exp()


@pytest.mark.parametrize(("kind", "a"), [("reverse_kl", 0.5), ("forward_kl", 0.5), ("js_divergence", 0.5),
                                         ("alpha_divergence", 0.5), ("alpha_divergence", 0.3)])
def test_f_divergence_dpo_reaches_its_optimum(kind: str, a: float):
    params = LossParams(beta=BETA, f_divergence_type=kind, f_alpha_divergence_coef=a)
    got = minimise("sigmoid", params)
    torch.testing.assert_close(got, f_optimum(kind, a), atol=1e-6, rtol=1e-5)
    if kind == "reverse_kl":
        torch.testing.assert_close(got, torch.softmax(PREF.log() + R / BETA, 0), atol=1e-6, rtol=1e-5)
