"""Likelihood baselines from the DPO paper: Preferred-FT (SFT on the chosen response) and Unlikelihood.

Also `log1mexp`, the stable log(1 − exp(x)) that Unlikelihood and ORPO share, and LD-DPO's down-weighting of the
verbose tail of the longer response (`ld_weighted_logps`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LN2 = math.log(2.0)


def log1mexp(x: Tensor, max_x: float = -1e-6) -> Tensor:
    """log(1 − exp(x)) for log-probs x <= 0, without cancellation (Mächler 2012).

        log(1 − eˣ) = log(−expm1(x))   if x > −ln 2
                    = log1p(−exp(x))   otherwise

    x is first clamped to <= `max_x`, so a probability of exactly 1 (x = 0) gives a large finite value
    (log(1e-6) ≈ −13.8) instead of −inf; the gradient is 0 above the clamp.

    Args:
        x: any shape, log-probabilities.
        max_x: upper clamp, < 0.

    Returns:
        Same shape as x.
    """
    x = x.clamp(max=max_x)
    return torch.where(x > -_LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, T) values over True entries of the (B, T) mask, per row -> (B,); 0 for an empty row."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum(-1)
    return total / mask.sum(-1).clamp(min=1)


def sft_loss(chosen_logps: Tensor, chosen_num_tokens: Tensor) -> Tensor:
    """Preferred-FT (DPO paper, sec. 6): per-token mean negative log-likelihood of the chosen response.

        L = −log π(y_w|x) / |y_w|

    Args:
        chosen_logps: (B,) log-prob of the chosen response, summed over its tokens.
        chosen_num_tokens: (B,) number of tokens summed (clamped to at least 1).

    Returns:
        (B,) per-example loss.
    """
    return -chosen_logps / chosen_num_tokens.to(chosen_logps.dtype).clamp(min=1)


def batch_token_nll(chosen_logps: Tensor, chosen_num_tokens: Tensor) -> Tensor:
    """NLL per token over the whole batch (TRL's `sft`, TPO's gold NLL): every chosen token weighs the same.

        L_i = −Σ_j log π(y_w,j|x_j) / Σ_j |y_w,j|   for every i: the batch's per-token NLL, as each example's loss

    The batch value stands in each example's place, as in TRL, so that a per-pair weight (WPO's `use_weighting`)
    scales it as TRL does: mean_i w_i·L_i = mean(w)·NLL. The mean, and so the gradient, is the per-token NLL either way.

    Args:
        chosen_logps: (B,) log-prob of the chosen response, summed over its tokens.
        chosen_num_tokens: (B,) number of tokens summed (the total clamped to at least 1).

    Returns:
        (B,) the batch's per-token NLL, repeated.
    """
    total = chosen_num_tokens.to(chosen_logps.dtype).sum().clamp(min=1)
    return (-chosen_logps.sum() / total).expand(chosen_logps.shape[0])


def ld_weighted_logps(token_logps: Tensor, token_mask: Tensor, alpha: float) -> Tensor:
    """LD-DPO (Liu et al. 2024, arXiv 2409.06411): log-probs with the tokens past the shared length down-weighted.

        ℓ_k = Σ_{t ≤ l_s} log π(y_k,t) + α Σ_{t > l_s} log π(y_k,t),   l_s = min_k |y_k|

    The first l_s tokens of every response count fully; the verbose tail of the longer ones counts α. α = 1 is the
    plain sum, α = 0 compares equal-length prefixes only.

    Args:
        token_logps: (B, K, T) per-token log-probs, 0 where masked.
        token_mask: (B, K, T) bool, True on response tokens (contiguous within each row).
        alpha: α in [0, 1].

    Returns:
        (B, K) weighted sums.
    """
    mask = token_mask.bool()
    position = mask.cumsum(-1)  # 1-based index of each response token within its response
    shared = mask.sum(-1).min(-1).values[:, None, None]  # (B, 1, 1)
    weights = torch.where(position <= shared, 1.0, alpha).to(token_logps.dtype)
    return torch.where(mask, token_logps * weights, torch.zeros_like(token_logps)).sum(-1)


def unlikelihood_loss(
    chosen_token_logps: Tensor,
    rejected_token_logps: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    alpha: float,
) -> Tensor:
    """Unlikelihood (Welleck et al. 2019, arXiv 1908.04319), the DPO paper's baseline (sec. 6).

        L = mean_t[−log π(y_w,t)] + α · mean_t[−log(1 − π(y_l,t))]

    Maximises the likelihood of the chosen tokens and minimises that of the rejected ones; means run over
    response tokens only. log(1 − π) = log1mexp(log π) is stable, and finite at π = 1.

    Args:
        chosen_token_logps: (B, T) per-token log-probs of the chosen response, 0 where masked.
        rejected_token_logps: (B, T') per-token log-probs of the rejected response, 0 where masked.
        chosen_mask: (B, T) bool, True on chosen response tokens.
        rejected_mask: (B, T') bool, True on rejected response tokens.
        alpha: α >= 0, weight of the unlikelihood term.

    Returns:
        (B,) per-example loss.
    """
    likelihood = _masked_mean(-chosen_token_logps, chosen_mask)
    unlikelihood = _masked_mean(-log1mexp(rejected_token_logps), rejected_mask)
    return likelihood + alpha * unlikelihood
