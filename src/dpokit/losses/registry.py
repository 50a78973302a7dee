"""The one loss registry: name -> `LossSpec`. Each adapter reads what its loss needs from `LossInputs`.

Adapters compute in at least float32 whatever the inputs' dtype, and return detached (B, K) rewards for metrics.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from dpokit.core.errors import ConfigError
from dpokit.losses import adapters
from dpokit.losses.base import (
    LossInputs,
    LossOutput,
    LossParams,
    LossSpec,
    avg_logps,
    likelihood_rewards,
    logratios,
    require_pairs,
    upcast,
)
from dpokit.losses.kl import token_kl_loss
from dpokit.losses.likelihood import unlikelihood_loss
from dpokit.losses.listwise import plackett_luce_loss
from dpokit.losses.pairwise import hinge_loss, orpo_loss, robust_loss, sigmoid_loss, simpo_loss
from dpokit.losses.unpaired import kto_loss


def _pairwise(name: str, loss: Callable[[Tensor, Tensor, LossParams], Tensor]) -> Callable[..., LossOutput]:
    """Adapter for a margin loss of the chosen and rejected log-ratios h_w, h_l (B,), or of f-DPO's scores under
    `loss.f_divergence_type` (`adapters.scored`); rewards are β·log-ratio."""
    return adapters.scored(name, loss)


_sigmoid = _pairwise("sigmoid", lambda hw, hl, p: sigmoid_loss(hw, hl, p.beta, p.label_smoothing))
_robust = _pairwise("robust", lambda hw, hl, p: robust_loss(hw, hl, p.beta, p.label_smoothing))
_hinge = _pairwise("hinge", lambda hw, hl, p: hinge_loss(hw, hl, p.beta))


def _plackett_luce(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    ratios = logratios(inputs, reference_free, "plackett_luce")
    return LossOutput(plackett_luce_loss(ratios, params.beta), (params.beta * ratios).detach())


def _sft(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    losses = adapters.nll(upcast(inputs.policy_logps[:, 0]), inputs.num_tokens[:, 0], params)
    return LossOutput(losses, likelihood_rewards(inputs, params, reference_free).detach())


def _unlikelihood(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    require_pairs(inputs, "unlikelihood")
    tokens, mask = inputs.policy_token_logps, inputs.token_mask
    if tokens is None or mask is None:
        raise ValueError("loss 'unlikelihood' needs policy_token_logps and token_mask of shape (B, 2, T)")
    tokens, mask = upcast(tokens), mask.bool()
    losses = unlikelihood_loss(tokens[:, 0], tokens[:, 1], mask[:, 0], mask[:, 1], params.unlikelihood_alpha)
    return LossOutput(losses, likelihood_rewards(inputs, params, reference_free).detach())


def _simpo(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    require_pairs(inputs, "simpo")
    avg = avg_logps(inputs)
    losses = simpo_loss(avg[:, 0], avg[:, 1], params.beta, params.simpo_gamma)
    return LossOutput(losses, (params.beta * avg).detach())


def _orpo(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    require_pairs(inputs, "orpo")
    avg = avg_logps(inputs)
    return LossOutput(orpo_loss(avg[:, 0], avg[:, 1], params.orpo_lambda), (params.beta * avg).detach())


def _kto(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    """Column 0: each record's own completion; column 1: a mismatched completion, used only to estimate z."""
    require_pairs(inputs, "kto")
    if inputs.labels is None:
        raise ValueError("loss 'kto' needs labels of shape (B,): True where the completion is desirable")
    ratios = logratios(inputs, reference_free, "kto")
    kl = ratios[:, 1].mean().clamp(min=0).detach()
    losses = kto_loss(
        ratios[:, 0], inputs.labels, kl, params.beta, params.kto_desirable_weight, params.kto_undesirable_weight
    )
    return LossOutput(losses, (params.beta * ratios).detach())


def _kl(inputs: LossInputs, params: LossParams, reference_free: bool) -> LossOutput:
    """Per-token KL(πθ‖πref) over every response (chosen and rejected); rewards as for the likelihood losses."""
    if inputs.kl is None:
        raise ValueError("loss 'kl' needs kl of shape (B, K): the trainer computes it with a live reference when the "
                         "objective needs_reference_distributions")
    losses = token_kl_loss(upcast(inputs.kl), inputs.num_tokens)
    return LossOutput(losses, likelihood_rewards(inputs, params, reference_free).detach())


def _check_cdpo(params: LossParams) -> None:
    if not 0 < params.label_smoothing < 0.5:
        raise ConfigError(
            f"config key 'loss.label_smoothing' must be in (0, 0.5) for cdpo, got {params.label_smoothing!r}"
        )


def _check_exo(params: LossParams) -> None:
    if not 0 < params.label_smoothing < 0.5:
        raise ConfigError(f"config key 'loss.label_smoothing' must be in (0, 0.5) for exo_pair (the paper's 1e-3), "
                          f"got {params.label_smoothing!r}")


_F = {"f_divergence": True}
_R = {"needs_reference": True}
LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("sigmoid", _sigmoid, **_R, **_F, description="DPO: −log σ(β h) (cDPO when ε > 0)"),
        LossSpec("ipo", adapters.ipo, **_R, **_F,
                 description="IPO: (h − 1/(2β))², h of per-token mean log-ratios (loss.ipo_per_token)"),
        LossSpec("cdpo", _sigmoid, **_R, **_F, check=_check_cdpo,
                 description="conservative DPO: −(1−ε) log σ(β h) − ε log σ(−β h), 0 < ε < 0.5"),
        LossSpec("robust", _robust, **_R, **_F, description="rDPO: noise-corrected DPO, ε < 0.5"),
        LossSpec("hinge", _hinge, **_R, **_F, description="SLiC hinge: max(0, 1 − β h)"),
        LossSpec("sigmoid_norm", adapters.sigmoid_norm, **_R, **_F,
                 description="DPO on per-token mean log-ratios: −log σ(β (h_w/|y_w| − h_l/|y_l|))"),
        LossSpec("exo_pair", adapters.exo_pair, **_R, **_F, check=_check_exo,
                 description="EXO: KL(σ(β h) ‖ 1 − ε), reverse KL to the smoothed labels; 0 < ε < 0.5"),
        LossSpec("discopop", adapters.discopop, **_R, **_F,
                 description="DiscoPOP: logistic/exponential mix of β h at temperature loss.discopop_tau"),
        LossSpec("nca_pair", adapters.nca_pair, **_R,
                 description="NCA: −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)"),
        LossSpec("bco_pair", adapters.bco_pair, **_R, running_statistic=adapters.bco_statistic,
                 description="BCO: −log σ(r_w − δ) − log σ(−(r_l − δ)), δ = 0 (TRL 1.x) or the running mean "
                             "reward (loss.bco_delta=running)"),
        LossSpec("sppo_hard", adapters.sppo_hard, **_R,
                 description="SPPO (hard labels): (h_w − 1/(2β))² + (h_l + 1/(2β))²"),
        LossSpec("aot", adapters.aot, **_R, pair_weights=False,
                 description="AOT: DPO on the batch's sorted policy vs sorted reference margins"),
        LossSpec("aot_unpaired", adapters.aot_unpaired, **_R, pair_weights=False,
                 description="AOT: DPO on the batch's sorted chosen vs sorted rejected log-ratios"),
        LossSpec("apo_zero", adapters.apo_zero, **_R, description="APO-zero: 1 − σ(r_w) + σ(r_l)"),
        LossSpec("apo_down", adapters.apo_down, **_R, description="APO-down: σ(r_w) + 1 − σ(r_w − r_l)"),
        LossSpec("plackett_luce", _plackett_luce, **_R, ranked=True, pair_weights=False,
                 description="DPO over ranked lists of K >= 2 responses"),
        LossSpec("sft", _sft, needs_reference=False, ranked=True, chosen_only=True, **_F,
                 description="Preferred-FT: chosen NLL per token (loss.sft_mean)"),
        LossSpec("unlikelihood", _unlikelihood, needs_reference=False,
                 description="chosen NLL + α · rejected unlikelihood, per token"),
        LossSpec("simpo", _simpo, needs_reference=False, description="SimPO: −log σ(β Δavg − γ), reference-free"),
        LossSpec("alphapo", adapters.alphapo, needs_reference=False,
                 description="AlphaPO: SimPO on rewards (1 − p^(−α))/α of per-token mean probabilities"),
        LossSpec("orpo", _orpo, needs_reference=False, description="ORPO: chosen NLL + λ odds-ratio term"),
        LossSpec("tpo", adapters.tpo, needs_reference=False, ranked=True, num_responses=3, pair_weights=False,
                 description="TPO: triples (gold, chosen, rejected): −log σ(β Δlog π) + α·NLL(gold)"),
        LossSpec("kto", _kto, **_R, unpaired=True, pair_weights=False,
                 description="KTO: unpaired desirable/undesirable"),
        LossSpec("kl", _kl, **_R, ranked=True, needs_reference_distributions=True,
                 description="per-token KL(πθ‖πref) over the vocabulary, all responses; add as 'sigmoid + λ*kl'"),
    )
}
