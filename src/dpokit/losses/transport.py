"""Distributional alignment by optimal transport (AOT; Melnyk et al. 2024, arXiv 2406.05882).

AOT asks the distribution of chosen rewards to dominate that of rejected rewards (first-order stochastic dominance)
rather than each pair's margin to be positive. In one dimension the optimal transport plan between two samples pairs
them in sorted order, so the loss is DPO's (with cDPO's label smoothing) applied to sorted quantities. The pairing
runs over the batch: the losses are per position of the sorted batch, not per example, and their mean is the batch
loss; the batch is each process's micro-batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpokit.losses.pairwise import sigmoid_loss


def aot_loss(policy_margins: Tensor, reference_margins: Tensor, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """AOT, paired: the sorted policy margins against the sorted reference margins.

        m_i = log πθ(y_w,i) − log πθ(y_l,i),   m_ref,i = log πref(y_w,i) − log πref(y_l,i)
        L_i = −(1 − ε) log σ(β (sort(m)_i − sort(m_ref)_i)) − ε log σ(−β (…))

    With B = 1 this is cDPO (or DPO at ε = 0).

    Args:
        policy_margins: (B,) policy log-prob margins.
        reference_margins: (B,) reference log-prob margins (0 when reference-free).
        beta: β > 0.
        label_smoothing: ε in [0, 0.5).

    Returns:
        (B,) losses of the sorted positions.
    """
    sorted_policy, _ = torch.sort(policy_margins, dim=0)
    sorted_reference, _ = torch.sort(reference_margins, dim=0)
    return sigmoid_loss(sorted_policy, sorted_reference, beta, label_smoothing)


def aot_unpaired_loss(chosen_logratios: Tensor, rejected_logratios: Tensor, beta: float,
                      label_smoothing: float = 0.0) -> Tensor:
    """AOT, unpaired: the sorted chosen log-ratios against the sorted rejected log-ratios, each sorted on its own.

        L_i = −(1 − ε) log σ(β (sort(h_w)_i − sort(h_l)_i)) − ε log σ(−β (…)),   h = log πθ − log πref

    Args:
        chosen_logratios: (B,) log πθ(y_w|x) − log πref(y_w|x).
        rejected_logratios: (B,) log πθ(y_l|x) − log πref(y_l|x).
        beta: β > 0.
        label_smoothing: ε in [0, 0.5).

    Returns:
        (B,) losses of the sorted positions.
    """
    sorted_chosen, _ = torch.sort(chosen_logratios, dim=0)
    sorted_rejected, _ = torch.sort(rejected_logratios, dim=0)
    return sigmoid_loss(sorted_chosen, sorted_rejected, beta, label_smoothing)
