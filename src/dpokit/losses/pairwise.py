"""Pairwise preference losses: functions of one chosen and one rejected response per prompt.

Each takes (B,) tensors and returns (B,) per-example losses. The DPO family works on log-ratios
`logratio = log πθ(y|x) − log πref(y|x)` (summed over response tokens) and their difference
`h = chosen_logratios − rejected_logratios` (or of f-DPO's scores, `divergence.py`); SimPO, AlphaPO and ORPO are
reference-free and work on per-token mean log-probs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dpokit.losses.likelihood import log1mexp


def sigmoid_loss(
    chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, label_smoothing: float = 0.0
) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, eq. 7), with cDPO's label smoothing (Mitchell 2023).

        L = −(1 − ε) log σ(β h) − ε log σ(−β h),   h = chosen_logratios − rejected_logratios

    ε = 0 is plain DPO, −log σ(β h). With ε > 0 the target preference probability is 1 − ε instead of 1, so the
    loss is minimised at a finite margin rather than pushing h to infinity.

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0, strength of the implicit KL penalty.
        label_smoothing: ε in [0, 0.5), assumed probability that the label is flipped.

    Returns:
        (B,) per-example loss.
    """
    logits = beta * (chosen_logratios - rejected_logratios)
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def ipo_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036): squared distance of the margin to a fixed target.

        L = (h − 1/(2β))²,   h = chosen_logratios − rejected_logratios

    Regresses the log-ratio margin onto 1/(2β) instead of pushing it to infinity, so it does not overfit
    deterministic preferences. Uses summed log-probs, as in the paper (TRL averages over tokens instead).

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0 (the paper's τ); smaller β means a larger target margin.

    Returns:
        (B,) per-example loss.
    """
    margin = chosen_logratios - rejected_logratios
    return (margin - 1 / (2 * beta)) ** 2


def robust_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """rDPO (Chowdhury et al. 2024, arXiv 2403.00409): unbiased DPO under labels flipped with rate ε.

        L = [−(1 − ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε),   h = chosen_logratios − rejected_logratios

    Its expectation over noisy labels equals the DPO loss on clean labels. ε = 0 is plain DPO.

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.
        label_smoothing: ε in [0, 0.5), the label-flip rate.

    Returns:
        (B,) per-example loss.

    Raises:
        ValueError: ε >= 0.5 (the denominator 1 − 2ε would be <= 0).
    """
    if not label_smoothing < 0.5:
        raise ValueError(f"robust_loss needs label_smoothing < 0.5, got {label_smoothing}")
    logits = beta * (chosen_logratios - rejected_logratios)
    flipped = -(1 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(-logits)
    return flipped / (1 - 2 * label_smoothing)


def hinge_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """SLiC hinge (Zhao et al. 2023, arXiv 2305.10425), on reference log-ratios as in the DPO literature.

        L = max(0, 1 − β h),   h = chosen_logratios − rejected_logratios

    Zero once the scaled margin β h reaches 1; 1/β is the margin in log-ratio units.

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    return F.relu(1 - beta * (chosen_logratios - rejected_logratios))


def simpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float, gamma: float) -> Tensor:
    """SimPO (Meng et al. 2024, arXiv 2405.14734): length-normalised, reference-free, with a target margin.

        L = −log σ(β (avg_w − avg_l) − γ),   avg = log πθ(y|x) / |y|

    The implicit reward is β·avg; γ is the margin the chosen reward must exceed the rejected one by.
    The paper's β is typically 2–2.5, much larger than DPO's.

    Args:
        chosen_avg_logps: (B,) per-token mean log-prob of the chosen response.
        rejected_avg_logps: (B,) per-token mean log-prob of the rejected response.
        beta: β > 0, reward scale.
        gamma: γ, target reward margin.

    Returns:
        (B,) per-example loss.
    """
    return -F.logsigmoid(beta * (chosen_avg_logps - rejected_avg_logps) - gamma)


def _log_odds(avg_logps: Tensor) -> Tensor:
    """log(P / (1 − P)) with P = exp(avg_logps), any shape."""
    return avg_logps - log1mexp(avg_logps)


def orpo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, lam: float) -> Tensor:
    """ORPO (Hong et al. 2024, arXiv 2403.07691): NLL on the chosen response plus an odds-ratio term.

        L = −avg_w − λ log σ(log_odds(avg_w) − log_odds(avg_l)),   log_odds(avg) = avg − log(1 − exp(avg))

    where avg is the per-token mean log-prob, so odds = P / (1 − P) with P = exp(avg). log(1 − exp(avg)) is computed
    stably (`log1mexp`), and stays finite at avg = 0.

    Args:
        chosen_avg_logps: (B,) per-token mean log-prob of the chosen response.
        rejected_avg_logps: (B,) per-token mean log-prob of the rejected response.
        lam: λ >= 0, weight of the odds-ratio term.

    Returns:
        (B,) per-example loss.
    """
    log_odds_ratio = _log_odds(chosen_avg_logps) - _log_odds(rejected_avg_logps)
    return -chosen_avg_logps - lam * F.logsigmoid(log_odds_ratio)


def exo_loss(chosen_scores: Tensor, rejected_scores: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """EXO-pref (Ji et al. 2024, arXiv 2402.00856, eq. 16 with K = 2): reverse KL from the model's to the labels'
    preference distribution, instead of DPO's forward cross-entropy.

        q = σ(β h),   L = q (log q − log(1 − ε)) + (1 − q) (log(1 − q) − log ε),   h = chosen − rejected

    i.e. KL((q, 1 − q) ‖ (1 − ε, ε)); minimised at q = 1 − ε, so ε > 0 is needed (the paper's 1e-3).

    Args:
        chosen_scores: (B,) chosen log-ratios (or f-DPO scores).
        rejected_scores: (B,) rejected log-ratios (or scores).
        beta: β > 0.
        label_smoothing: ε in (0, 1), the labels' probability that the rejected response is better.

    Returns:
        (B,) per-example loss, >= 0.
    """
    logits = beta * (chosen_scores - rejected_scores)
    q_w, q_l = torch.sigmoid(logits), torch.sigmoid(-logits)
    return (q_w * (F.logsigmoid(logits) - math.log1p(-label_smoothing))
            + q_l * (F.logsigmoid(-logits) - math.log(label_smoothing)))


def discopop_loss(chosen_scores: Tensor, rejected_scores: Tensor, beta: float, tau: float) -> Tensor:
    """DiscoPOP / LRML (Lu et al. 2024, arXiv 2406.08414, eq. 5): the discovered log-ratio modulated loss.

        ρ = β h,   m = σ(ρ / τ),   L = (1 − m) · (−log σ(ρ)) + m · exp(−ρ)

    A blend of DPO's logistic loss (for ρ well below 0) and an exponential loss (for ρ well above 0), switched by the
    margin itself at temperature τ (the paper's 0.05).

    Args:
        chosen_scores: (B,) chosen log-ratios (or f-DPO scores).
        rejected_scores: (B,) rejected log-ratios (or scores).
        beta: β > 0.
        tau: τ > 0.

    Returns:
        (B,) per-example loss.
    """
    logits = beta * (chosen_scores - rejected_scores)
    mix = torch.sigmoid(logits / tau)
    return (1 - mix) * -F.logsigmoid(logits) + mix * torch.exp(-logits)


def alphapo_rewards(avg_logps: Tensor, alpha: float) -> Tensor:
    """AlphaPO's reward shape (Gupta et al. 2025, arXiv 2501.03884, without β): (1 − p^(−α)) / α with
    p = exp(avg_logps) the per-token mean probability; → avg_logps (SimPO's reward) as α → 0. Any shape."""
    if alpha == 0:
        return avg_logps
    return -torch.expm1(-alpha * avg_logps) / alpha


def alphapo_loss(chosen_avg_logps: Tensor, rejected_avg_logps: Tensor, beta: float, gamma: float,
                 alpha: float) -> Tensor:
    """AlphaPO (Gupta et al. 2025, arXiv 2501.03884): SimPO with the reward's shape set by α.

        L = −log σ(β (r_α(avg_w) − r_α(avg_l)) − γ),   r_α(avg) = (1 − exp(−α avg)) / α

    α > 0 makes the reward concave in the log-probability, which the paper shows reduces likelihood displacement of
    the chosen response; α = 0 is SimPO exactly.

    Args:
        chosen_avg_logps: (B,) per-token mean log-prob of the chosen response.
        rejected_avg_logps: (B,) per-token mean log-prob of the rejected response.
        beta: β > 0, reward scale.
        gamma: γ, target reward margin.
        alpha: α, reward shape.

    Returns:
        (B,) per-example loss.
    """
    margin = alphapo_rewards(chosen_avg_logps, alpha) - alphapo_rewards(rejected_avg_logps, alpha)
    return -F.logsigmoid(beta * margin - gamma)
