"""Pairwise preference losses: functions of one chosen and one rejected response per prompt.

Each takes (B,) tensors and returns (B,) per-example losses. The DPO family works on log-ratios
`logratio = log πθ(y|x) − log πref(y|x)` (summed over response tokens) and their difference
`h = chosen_logratios − rejected_logratios`; SimPO and ORPO are reference-free and work on per-token mean log-probs.
"""

from __future__ import annotations

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
