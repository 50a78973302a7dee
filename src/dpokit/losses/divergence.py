"""f-DPO's scores: the divergence to πref that a margin loss regularises towards, as a function of each log-ratio.

Wang et al. 2023 (arXiv 2309.16240, "Beyond Reverse KL"), Thm. 1: with an f-divergence penalty β·D_f(πθ‖πref)
instead of DPO's reverse KL, the optimal policy satisfies r(x, y) = β f'(πθ(y|x)/πref(y|x)) + const(x), so every
loss built on the chosen − rejected reward difference keeps its form with the log-ratio log u replaced by f'(u):

    reverse_kl         f'(u) = log u                       (DPO; the paper's + 1 cancels in the difference)
    forward_kl         f'(u) = 1 − 1/u
    js_divergence      f'(u) = log(2u / (1 + u)) = log 2 + log σ(log u)
    alpha_divergence   f'(u) = (u^(a−1) − 1) / (a − 1),    a → 1: log u

`a` is TRL's `f_alpha_divergence_coef`; the paper writes the same score as (1 − u^(−α))/α with α = 1 − a (both 0.5
by default). The const(x) = β·log Z(x) cancels only in differences, so only margin losses take these scores.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_MAX_EXPONENT = 80.0  # (a − 1)·log u is clamped here so exp stays finite in float32 (as TRL does)


def f_divergence_scores(logratios: Tensor, kind: str, alpha: float = 0.5) -> Tensor:
    """f'(u) at u = πθ(y|x)/πref(y|x), from the log-ratios.

    Args:
        logratios: any shape, log πθ(y|x) − log πref(y|x).
        kind: reverse_kl | forward_kl | js_divergence | alpha_divergence.
        alpha: `a` of alpha_divergence (ignored otherwise); within 1e-6 of 1 it is reverse_kl.

    Returns:
        Same shape as `logratios`.

    Raises:
        ValueError: an unknown `kind`.
    """
    match kind:
        case "reverse_kl":
            return logratios
        case "forward_kl":
            return 1 - torch.exp(-logratios)
        case "js_divergence":
            return math.log(2.0) + F.logsigmoid(logratios)
        case "alpha_divergence":
            if abs(alpha - 1.0) < 1e-6:
                return logratios
            exponent = ((alpha - 1.0) * logratios).clamp(max=_MAX_EXPONENT)
            return torch.expm1(exponent) / (alpha - 1.0)
    raise ValueError(f"unknown f-divergence {kind!r}; known: reverse_kl, forward_kl, js_divergence, alpha_divergence")

