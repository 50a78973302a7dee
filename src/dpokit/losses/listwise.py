"""Ranked-list preference losses: the Plackett-Luce generalisation of DPO to K >= 2 responses per prompt, and TPO's
triples (gold, chosen, rejected)."""

from __future__ import annotations

import torch
from torch import Tensor

from dpokit.losses.pairwise import sigmoid_loss


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


def tpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, gold_nll: Tensor, beta: float, alpha: float,
             label_smoothing: float = 0.0) -> Tensor:
    """TPO (Saeidi et al. 2024, arXiv 2405.16681): a reference-free preference term on (chosen, rejected) plus an
    NLL term on a third, gold response, in one step.

        L = −(1 − ε) log σ(β (log πθ(y_w) − log πθ(y_l))) − ε log σ(−β (…)) + α · NLL(y_gold)

    Args:
        chosen_logps: (B,) summed log-prob of the preferred response.
        rejected_logps: (B,) summed log-prob of the rejected response.
        gold_nll: (B,) the gold response's NLL (per token, `likelihood.batch_token_nll` or per sequence).
        beta: β > 0 (TRL's TPO default is 0.01).
        alpha: α >= 0, weight of the NLL term.
        label_smoothing: ε in [0, 0.5).

    Returns:
        (B,) per-example loss.
    """
    return sigmoid_loss(chosen_logps, rejected_logps, beta, label_smoothing) + alpha * gold_nll
