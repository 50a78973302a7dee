"""The types every loss shares, and the helpers that turn `LossInputs` into what the pure functions take.

Call tree of one training step::

    Objective(inputs, params)                      objective.py: weighted sum over terms
      └─ spec.fn(inputs, params, reference_free)   registry.py: one adapter per registry entry
           ├─ logratios(inputs, ...) / avg_logps(inputs)      here: (B, K) float32-or-wider views
           └─ sigmoid_loss(...) / kto_loss(...) / ...          pairwise.py, listwise.py, likelihood.py, unpaired.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from dpokit.losses.divergence import f_divergence_scores


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
        kl: (B, K) Σ over each response's tokens of KL(πθ‖πref) between the next-token distributions (over the whole
            vocabulary), with gradients through πθ only; only when the objective `needs_reference_distributions`.
        reference_token_logps: (B, K, T) per-token reference log-probs, same layout as `policy_token_logps`; only
            when the objective `needs_reference_token_logps` (LD-DPO's `ld_alpha`).
        log_sum_sq_probs: (B, K) Σ over each response's tokens of log Σ_v πθ(v)², no gradient; only when the
            objective `needs_log_sum_sq_probs` (WPO's `use_weighting`).
        running_mean: the running mean of this term's `running_statistic` over every training micro-batch so far,
            this one included, over all processes (BCO's δ); set by `Objective` for the term that declared it.
    """

    policy_logps: Tensor
    num_tokens: Tensor
    reference_logps: Tensor | None = None
    policy_token_logps: Tensor | None = None
    token_mask: Tensor | None = None
    labels: Tensor | None = None
    kl: Tensor | None = None
    reference_token_logps: Tensor | None = None
    log_sum_sq_probs: Tensor | None = None
    running_mean: float | None = None


F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@dataclass
class LossParams:
    """Hyper-parameters of every loss; each loss reads the ones it needs.

    The one definition of these names: the config's `loss` section extends this class (`trainer.config.LossConfig`),
    so each field's `help` metadata is what `dpokit train --help` prints, and `objective.validate_params` checks the
    ranges. Not frozen only because that config section is filled key by key; a trainer's copy is never changed.
    """

    beta: float = field(default=0.1, metadata={"help": "β: strength of the KL constraint (the implicit reward is "
                                                         "β·log πθ/πref); SimPO's reward scale"})
    label_smoothing: float = field(default=0.0, metadata={"help": "ε for cdpo / robust: assumed fraction of flipped "
                                                                   "preference labels"})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO target margin γ"})
    orpo_lambda: float = field(default=0.1, metadata={"help": "ORPO weight λ of the odds-ratio term"})
    unlikelihood_alpha: float = field(default=1.0, metadata={"help": "weight α of the unlikelihood term on rejected "
                                                                      "tokens"})
    kto_desirable_weight: float = field(default=1.0, metadata={"help": "KTO λ_D: weight of desirable examples"})
    kto_undesirable_weight: float = field(default=1.0, metadata={"help": "KTO λ_U: weight of undesirable examples"})
    ipo_per_token: bool = field(default=True, metadata={
        "help": "ipo on each response's log-ratio averaged over its tokens (TRL's form, which the IPO authors "
                "confirmed gives the paper's results); false: summed log-ratios, as written in the paper's eq. 17"})
    sft_mean: str = field(default="batch_tokens", metadata={
        "help": "sft / tpo NLL: batch_tokens (mean over every chosen token of the micro-batch, as TRL) | sequence "
                "(each response's per-token mean, then the mean over examples)",
        "choices": ("batch_tokens", "sequence")})
    f_divergence_type: str = field(default="reverse_kl", metadata={
        "help": "f-DPO's divergence to πref for the margin losses (sigmoid, cdpo, robust, hinge, ipo, exo_pair, "
                "discopop, sigmoid_norm): reverse_kl (DPO) | forward_kl | js_divergence | alpha_divergence",
        "choices": F_DIVERGENCES})
    f_alpha_divergence_coef: float = field(default=0.5, metadata={
        "help": "α of alpha_divergence, as TRL: score (u^(α−1) − 1)/(α − 1) of u = πθ/πref (the f-DPO paper's α is "
                "1 − this; both 0.5 by default)"})
    discopop_tau: float = field(default=0.05, metadata={"help": "DiscoPOP τ: temperature of the logistic/exponential "
                                                                 "mix (the paper's 0.05)"})
    ld_alpha: float | None = field(default=None, metadata={
        "help": "LD-DPO α in [0, 1]: weight of each response's tokens past the pair's shared length, in policy and "
                "reference log-probs of the reference-based losses; null: no down-weighting (plain sums)"})
    alphapo_alpha: float = field(default=0.25, metadata={"help": "AlphaPO α: reward (1 − p^(−α))/α of the per-token "
                                                                  "mean probability p; α → 0 is SimPO"})
    tpo_alpha: float = field(default=1.0, metadata={"help": "TPO weight α of the NLL on the gold (first) response"})
    use_weighting: bool = field(default=False, metadata={
        "help": "WPO: each pair's loss times w = exp(w̄_w + w̄_l), w̄ = mean over the response's tokens of "
                "log πθ(y_t) − log Σ_v πθ(v)², without gradient (TRL's use_weighting); pairwise losses, not aot"})
    wpo_clamp: bool = field(default=False, metadata={
        "help": "with use_weighting: cap each pair's weight at 1 (the WPO authors' code, TRL < 1.0); false "
                "(default): unclamped, as TRL 1.x's use_weighting"})
    bco_delta: str = field(default="zero", metadata={
        "help": "bco_pair's reward shift δ: zero (default: δ = 0, TRL 1.x's bco_pair) | running (the paper's and "
                "TRL < 1.0's: the mean of the implicit rewards β·log πθ/πref of chosen and rejected over every "
                "training micro-batch so far, all processes)",
        "choices": ("zero", "running")})


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
        chosen_only: reads only each example's best response (column 0), so the data layer may drop the others.
        needs_reference_distributions: reads `LossInputs.kl`, computed from the reference's next-token
            distributions at every response token: a live reference model (copy or adapter off), not cached log-probs.
        f_divergence: accepts `f_divergence_type` other than reverse_kl: built on the chosen − rejected score
            difference, where f-DPO's β·log Z(x) cancels, or (sft) reads no log-ratio at all.
        num_responses: takes exactly this many responses per prompt (TPO: 3), None for any the entry allows.
        pair_weights: each example's loss is its pair's own, so WPO (`use_weighting`) may scale it; False where
            the loss sorts the batch (aot), reads lists, triples or unpaired rows.
        running_statistic: `statistic(inputs, params, reference_free)` -> (2,) [sum, count] of values to keep a
            running mean of across training micro-batches (`state.LossState`), read back as `inputs.running_mean`;
            None (or a None result for these params): the loss keeps no state.
        description: one line for `--help` and error messages.
        check: extra validation of params beyond `validate_params`' shared ranges; raises ConfigError.
    """

    name: str
    fn: LossFn
    needs_reference: bool
    ranked: bool = False
    unpaired: bool = False
    chosen_only: bool = False
    needs_reference_distributions: bool = False
    f_divergence: bool = False
    num_responses: int | None = None
    pair_weights: bool = True
    running_statistic: Callable[[LossInputs, LossParams, bool], Tensor | None] | None = None
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


def scores(inputs: LossInputs, params: LossParams, reference_free: bool, name: str) -> Tensor:
    """f'(πθ/πref) of each response, (B, K): the log-ratios under reverse_kl (DPO), else f-DPO's scores
    (`divergence.f_divergence_scores`, `loss.f_divergence_type`)."""
    ratios = logratios(inputs, reference_free, name)
    return f_divergence_scores(ratios, params.f_divergence_type, params.f_alpha_divergence_coef)


def per_token(values: Tensor, inputs: LossInputs) -> Tensor:
    """(B, K) values divided by each response's token count (at least 1): a sum made a per-token mean."""
    return values / inputs.num_tokens.to(values.dtype).clamp(min=1)


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
