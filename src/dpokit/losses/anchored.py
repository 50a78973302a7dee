"""Anchored pairwise losses: each response's own implicit reward r = β·log πθ/πref is pushed against a fixed anchor
(0, or a target), not only the margin r_w − r_l, so they also decide whether the chosen response's likelihood rises.

Each takes (B,) log-ratios of the chosen and the rejected response and returns (B,) per-example losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nca_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """NCA (Chen et al. 2024, arXiv 2402.05369, pairwise form): noise-contrastive alignment.

        L = −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l),   r = β · logratio

    Optimises absolute likelihoods: the chosen reward rises, and both are held back by the ½-weighted terms, instead
    of only their difference rising (which lets both likelihoods fall, as in DPO).

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    r_w, r_l = beta * chosen_logratios, beta * rejected_logratios
    return -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)


def bco_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float, delta: Tensor | float = 0.0) -> Tensor:
    """BCO (Jung et al. 2024, arXiv 2404.04656): a binary classifier of chosen (1) versus rejected (0) responses
    whose logit is the implicit reward, shifted by δ.

        L = −log σ(r_w − δ) − log σ(−(r_l − δ)),   r = β · logratio

    δ shifts the classifier's decision boundary to where the rewards are: the paper (sec. 3.2) and TRL < 1.0 keep it
    as the running mean of the (detached) rewards of chosen and rejected over training, which the registry's
    `bco_pair` does with `loss.bco_delta=running` (`state.LossState`); TRL 1.x uses δ = 0 (`bco_delta=zero`).

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.
        delta: reward shift δ, a detached scalar (a float, or a 0-dim tensor).

    Returns:
        (B,) per-example loss.
    """
    r_w, r_l = beta * chosen_logratios, beta * rejected_logratios
    return -F.logsigmoid(r_w - delta) - F.logsigmoid(-(r_l - delta))


def sppo_hard_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """SPPO, hard labels (Wu et al. 2024, arXiv 2405.00675, eq. 4.7 with P(y_w ≻ ·) = 1, P(y_l ≻ ·) = 0).

        L = (logratio_w − 1/(2β))² + (logratio_l + 1/(2β))²

    Each log-ratio is regressed onto η (P − ½) with η = 1/β: the winner's to +1/(2β), the loser's to −1/(2β).

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    target = 0.5 / beta
    return (chosen_logratios - target) ** 2 + (rejected_logratios + target) ** 2


def apo_zero_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 7): raise the chosen, lower the rejected.

        L = 1 − σ(r_w) + σ(r_l),   r = β · logratio

    For data whose chosen responses are better than what the model now says.

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    return 1 - torch.sigmoid(beta * chosen_logratios) + torch.sigmoid(beta * rejected_logratios)


def apo_down_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, eq. 8): lower both, the rejected more.

        L = σ(r_w) + 1 − σ(r_w − r_l),   r = β · logratio

    For data whose chosen responses are worse than what the model now says.

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    r_w, r_l = beta * chosen_logratios, beta * rejected_logratios
    return torch.sigmoid(r_w) + 1 - torch.sigmoid(r_w - r_l)
