"""Ranked-list preference loss: the Plackett-Luce generalisation of DPO to K >= 2 responses per prompt."""

from __future__ import annotations

import torch
from torch import Tensor


def plackett_luce_loss(logratios: Tensor, beta: float) -> Tensor:
    """Plackett-Luce DPO (Rafailov et al. 2023, arXiv 2305.18290, App. A.3, eq. 18).

    With rewards r_k = β · logratios_k of K responses ranked best first (τ(1) ≻ ... ≻ τ(K)):

        L = −Σ_{k=0}^{K−2} [r_k − logsumexp(r_k, ..., r_{K−1})]

    i.e. the negative log-probability of the observed ranking when each position is a softmax over the responses
    not yet placed. For K = 2 this is −log σ(r_0 − r_1), the DPO (sigmoid) loss.

    Args:
        logratios: (B, K) log πθ(y_k|x) − log πref(y_k|x), in preference order, best first.
        beta: β > 0.

    Returns:
        (B,) per-example loss.
    """
    rewards = beta * logratios
    # tail_lse[:, k] = logsumexp(r_k, ..., r_{K−1}): a reversed cumulative logsumexp.
    tail_lse = torch.logcumsumexp(rewards.flip(-1), dim=-1).flip(-1)
    return -(rewards - tail_lse)[:, :-1].sum(-1)
