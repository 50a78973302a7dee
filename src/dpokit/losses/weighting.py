"""WPO's per-pair weights (Zhou et al. 2024, arXiv 2406.11827): off-policy pairs weighed by how likely the policy is
to produce them, so training on a fixed data set simulates on-policy data. `loss.use_weighting`, as TRL's."""

from __future__ import annotations

import torch
from torch import Tensor


def wpo_weights(policy_logps: Tensor, log_sum_sq_probs: Tensor, num_tokens: Tensor, clamp: bool = True) -> Tensor:
    """Each pair's weight, without gradient (WPO, eq. 2, with the "sampling-aligned" per-token normaliser):

        w̄(y) = (1/|y|) Σ_t [log πθ(y_t | x, y<t) − log Σ_v πθ(v | x, y<t)²]
        w = exp(w̄(y_w) + w̄(y_l)),   clamped at 1 when `clamp` (the authors' code, TRL < 1.0; TRL 1.x does not)

    Σ_v πθ(v)² is the probability that two samples of the next token agree, so w̄ measures each token's probability
    against what the policy itself would expect to draw; w̄ may exceed 0 on confident tokens, hence the clamp.

    Args:
        policy_logps: (B, 2) policy log-probs summed over each response's tokens (plain sums, not LD-DPO's).
        log_sum_sq_probs: (B, 2) log Σ_v πθ(v)² summed over the same tokens.
        num_tokens: (B, 2) response tokens in each sum (clamped to at least 1).
        clamp: cap the weight at 1.

    Returns:
        (B,) float32-or-wider weights, detached.
    """
    with torch.no_grad():
        dtype = torch.promote_types(policy_logps.dtype, torch.float32)
        mean = (policy_logps.to(dtype) - log_sum_sq_probs.to(dtype)) / num_tokens.to(dtype).clamp(min=1)
        weights = torch.exp(mean.sum(-1))
        return weights.clamp(max=1.0) if clamp else weights
