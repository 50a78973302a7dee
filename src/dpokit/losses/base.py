"""The types every loss shares, and the helpers that turn `LossInputs` into what the pure functions take.

Call tree of one training step::

    Objective(inputs, params)                      objective.py: weighted sum over terms
      └─ spec.fn(inputs, params, reference_free)   registry.py: one adapter per registry entry
           ├─ logratios(inputs, ...) / avg_logps(inputs)      here: (B, K) float32-or-wider views
           └─ sigmoid_loss(...) / kto_loss(...) / ...          pairwise.py, listwise.py, likelihood.py, unpaired.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor


class LossOutput(NamedTuple):
    """What a loss returns to the trainer.

    Attributes:
        losses: (B,) per-example loss; the batch loss is `losses.mean()`.
        rewards: (B, K) detached implicit reward of each response, for metrics (reward accuracy, margins).
    """

    losses: Tensor
    rewards: Tensor


@dataclass(frozen=True)
class LossInputs:
    """Everything the trainer has computed for one batch; K responses per prompt, best first.

    Attributes:
        policy_logps: (B, K) policy log-probs summed over response tokens (eos included).
        num_tokens: (B, K) response tokens counted in each sum.
        reference_logps: (B, K) reference log-probs, same sums; None when no reference is used.
        policy_token_logps: (B, K, T) per-token policy log-probs, 0 where masked; only for token-level losses.
        token_mask: (B, K, T) bool, True on response tokens.
        labels: (B,) bool, True if the record's completion is desirable; unpaired (KTO) batches only.
    """

    policy_logps: Tensor
    num_tokens: Tensor
    reference_logps: Tensor | None = None
    policy_token_logps: Tensor | None = None
    token_mask: Tensor | None = None
    labels: Tensor | None = None


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of every loss; each loss reads the ones it needs.

    Attributes:
        beta: inverse temperature β; the strength of the implicit KL penalty (DPO, IPO, KTO) or reward scale (SimPO).
        label_smoothing: ε, the assumed probability that a preference label is flipped (cDPO, rDPO).
        simpo_gamma: γ, SimPO's target reward margin.
        orpo_lambda: λ, weight of ORPO's odds-ratio term relative to its NLL term.
        unlikelihood_alpha: α, weight of the unlikelihood term on the rejected response.
        kto_desirable_weight: w_D, KTO's weight on desirable examples.
        kto_undesirable_weight: w_U, KTO's weight on undesirable examples.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1
    unlikelihood_alpha: float = 1.0
    kto_desirable_weight: float = 1.0
    kto_undesirable_weight: float = 1.0


LossFn = Callable[[LossInputs, LossParams, bool], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """One registry entry: the loss and what it needs, so the trainer asks instead of comparing names.

    Attributes:
        name: registry key, as written in `parse_objective` expressions.
        fn: `fn(inputs, params, reference_free) -> LossOutput`.
        needs_reference: uses reference log-probs (unless the objective is reference-free).
        ranked: accepts K > 2 responses per prompt; pairwise losses need K == 2.
        unpaired: KTO layout: K == 2 rows are [the record's completion, a mismatched completion from another record].
        needs_token_logps: needs `policy_token_logps` and `token_mask`.
        description: one line for `--help` and error messages.
        check: extra validation of params beyond `validate_params`' shared ranges; raises ConfigError.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    ranked: bool = False
    unpaired: bool = False
    needs_token_logps: bool = False
    description: str = ""
    check: Callable[[LossParams], None] | None = None


def upcast(x: Tensor) -> Tensor:
    """x in at least float32 (bf16/fp16 are upcast, float64 is kept): losses of (B, K) sums are cheap to do exactly."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def logratios(inputs: LossInputs, reference_free: bool, name: str) -> Tensor:
    """log πθ(y|x) − log πref(y|x) in float32 or wider, shape (B, K); the policy log-probs alone if reference-free.

    Raises:
        ValueError: a reference is needed but the trainer passed none (a trainer bug, not a config error).
    """
    policy = upcast(inputs.policy_logps)
    if reference_free:
        return policy
    if inputs.reference_logps is None:
        raise ValueError(f"loss '{name}' needs reference_logps (or a reference-free objective); got None")
    return policy - upcast(inputs.reference_logps)


def avg_logps(inputs: LossInputs) -> Tensor:
    """Per-token mean policy log-prob, (B, K) float32 or wider: summed log-prob / tokens (at least 1)."""
    return upcast(inputs.policy_logps) / inputs.num_tokens.to(torch.float32).clamp(min=1)


def likelihood_rewards(inputs: LossInputs, params: LossParams, reference_free: bool) -> Tensor:
    """(B, K) rewards for losses that need no reference: β·(policy − ref) if a reference is at hand, else β·policy."""
    if reference_free or inputs.reference_logps is None:
        return params.beta * upcast(inputs.policy_logps)
    return params.beta * (upcast(inputs.policy_logps) - upcast(inputs.reference_logps))


def require_pairs(inputs: LossInputs, name: str) -> None:
    """Raises ValueError unless the batch holds exactly two responses per prompt (chosen, rejected)."""
    k = inputs.policy_logps.shape[-1]
    if inputs.policy_logps.dim() != 2 or k != 2:
        raise ValueError(
            f"loss '{name}' takes pairs, policy_logps of shape (B, 2); got {tuple(inputs.policy_logps.shape)}. "
            "The data layer expands ranked lists into pairs for pairwise losses."
        )
