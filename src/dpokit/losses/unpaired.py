"""Unpaired preference loss: KTO learns from single completions labelled desirable or undesirable."""

from __future__ import annotations

import torch
from torch import Tensor


def kto_loss(
    logratios: Tensor,
    labels: Tensor,
    kl: Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306): a prospect-theory value around a reference point z.

        desirable:    L = w_D · (1 − σ(β (r − z)))
        undesirable:  L = w_U · (1 − σ(β (z − r)))

    with r = log πθ(y|x) − log πref(y|x) and z an estimate of KL(πθ ‖ πref) that is not back-propagated through
    (the caller estimates it from mismatched prompt/completion pairs and clamps it at 0).

    Args:
        logratios: (B,) r for each record's completion.
        labels: (B,) bool, True where the completion is desirable.
        kl: reference point z >= 0, a detached scalar (0-dim tensor or float).
        beta: β > 0.
        desirable_weight: w_D > 0.
        undesirable_weight: w_U > 0.

    Returns:
        (B,) per-example loss.
    """
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    return torch.where(labels.bool(), desirable, undesirable)
