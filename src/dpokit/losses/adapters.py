"""Registry adapters of the losses TRL's `DPOConfig.loss_type` (and its CPO and TPO trainers) name beyond DPO's
first ones: each reads what its loss needs from `LossInputs` and returns the loss with detached (B, K) rewards.

`registry.py` lists them; the shared helpers (`scores`, `per_token`, ...) are in `base.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dpokit.losses.anchored import apo_down_loss, apo_zero_loss, bco_loss, nca_loss, sppo_hard_loss
from dpokit.losses.base import (
    LossInputs,
    LossOutput,
    LossParams,
    avg_logps,
    logratios,
    per_token,
    require_pairs,
    scores,
    upcast,
)
from dpokit.losses.likelihood import batch_token_nll, sft_loss
from dpokit.losses.listwise import tpo_loss
from dpokit.losses.pairwise import alphapo_loss, alphapo_rewards, discopop_loss, exo_loss, ipo_loss, sigmoid_loss
from dpokit.losses.transport import aot_loss, aot_unpaired_loss

ScoreLoss = Callable[[Tensor, Tensor, LossParams], Tensor]


def scored(name: str, loss: ScoreLoss, normalise: Callable[[LossParams], bool] = lambda p: False):
    """Adapter for a margin loss of the chosen and rejected scores (B,) (f-DPO's f'(u); the log-ratios under
    reverse_kl), each divided by its response's token count when `normalise(params)`; rewards are β·log-ratio."""

    def adapter(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
        require_pairs(inputs, name)
        values = scores(inputs, params, reference_free, name)
        if normalise(params):
            values = per_token(values, inputs)
        rewards = params.beta * logratios(inputs, reference_free, name)
        return LossOutput(loss(values[:, 0], values[:, 1], params), rewards.detach())

    return adapter


def anchored(name: str, loss: ScoreLoss):
    """Adapter for a loss of each response's own log-ratio (B,), chosen and rejected; rewards are β·log-ratio."""

    def adapter(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
        require_pairs(inputs, name)
        ratios = logratios(inputs, reference_free, name)
        return LossOutput(loss(ratios[:, 0], ratios[:, 1], params), (params.beta * ratios).detach())

    return adapter


ipo = scored("ipo", lambda hw, hl, p: ipo_loss(hw, hl, p.beta), normalise=lambda p: p.ipo_per_token)
sigmoid_norm = scored("sigmoid_norm", lambda hw, hl, p: sigmoid_loss(hw, hl, p.beta), normalise=lambda p: True)
exo_pair = scored("exo_pair", lambda hw, hl, p: exo_loss(hw, hl, p.beta, p.label_smoothing))
discopop = scored("discopop", lambda hw, hl, p: discopop_loss(hw, hl, p.beta, p.discopop_tau))
nca_pair = anchored("nca_pair", lambda hw, hl, p: nca_loss(hw, hl, p.beta))
sppo_hard = anchored("sppo_hard", lambda hw, hl, p: sppo_hard_loss(hw, hl, p.beta))
apo_zero = anchored("apo_zero", lambda hw, hl, p: apo_zero_loss(hw, hl, p.beta))
apo_down = anchored("apo_down", lambda hw, hl, p: apo_down_loss(hw, hl, p.beta))
aot_unpaired = anchored("aot_unpaired", lambda hw, hl, p: aot_unpaired_loss(hw, hl, p.beta, p.label_smoothing))


def bco_pair(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    """BCO with δ = `inputs.running_mean` (`loss.bco_delta=running`; this batch's own mean when no state is kept)
    or 0 (`zero`)."""
    require_pairs(inputs, "bco_pair")
    ratios = logratios(inputs, reference_free, "bco_pair")
    delta = 0.0
    if params.bco_delta == "running":
        delta = inputs.running_mean
        if delta is None:
            total, count = bco_statistic(inputs, params, reference_free).tolist()
            delta = total / count
    return LossOutput(bco_loss(ratios[:, 0], ratios[:, 1], params.beta, delta), (params.beta * ratios).detach())


def bco_statistic(inputs: LossInputs, params: LossParams, reference_free: bool) -> Tensor | None:
    """[x̄, 1]: the micro-batch's mean implicit reward β·log πθ/πref over its chosen and rejected responses, counted
    once per process and micro-batch, as TRL's `RunningMoments.update` of BCO's δ; None for `bco_delta=zero`."""
    if params.bco_delta != "running":
        return None
    with torch.no_grad():
        rewards = params.beta * logratios(inputs, reference_free, "bco_pair")
        return torch.stack([rewards.mean(), torch.ones((), dtype=rewards.dtype, device=rewards.device)])


def aot(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    """Sorted policy margins against sorted reference margins (0 when reference-free)."""
    require_pairs(inputs, "aot")
    policy = upcast(inputs.policy_logps)
    reference = torch.zeros_like(policy) if reference_free else policy - logratios(inputs, False, "aot")
    losses = aot_loss(policy[:, 0] - policy[:, 1], reference[:, 0] - reference[:, 1], params.beta,
                      params.label_smoothing)
    return LossOutput(losses, (params.beta * (policy - reference)).detach())


def nll(logps: Tensor, num_tokens: Tensor, params: LossParams) -> Tensor:
    """(B,) NLL of one response per example, by `loss.sft_mean`: batch_tokens (TRL's) or per sequence."""
    if params.sft_mean == "batch_tokens":
        return batch_token_nll(logps, num_tokens)
    return sft_loss(logps, num_tokens)


def alphapo(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    require_pairs(inputs, "alphapo")
    avg = avg_logps(inputs)
    losses = alphapo_loss(avg[:, 0], avg[:, 1], params.beta, params.simpo_gamma, params.alphapo_alpha)
    return LossOutput(losses, (params.beta * alphapo_rewards(avg, params.alphapo_alpha)).detach())


def tpo(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    """Columns: 0 the gold response (NLL), 1 the chosen, 2 the rejected (the preference term, reference-free)."""
    k = inputs.policy_logps.shape[-1]
    if inputs.policy_logps.dim() != 2 or k != 3:
        raise ValueError(f"loss 'tpo' takes triples, policy_logps of shape (B, 3) ranked (gold, chosen, rejected); "
                         f"got {tuple(inputs.policy_logps.shape)}")
    policy = upcast(inputs.policy_logps)
    gold = nll(policy[:, 0], inputs.num_tokens[:, 0], params)
    losses = tpo_loss(policy[:, 1], policy[:, 2], gold, params.beta, params.tpo_alpha, params.label_smoothing)
    return LossOutput(losses, (params.beta * policy).detach())
