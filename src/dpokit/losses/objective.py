"""The training objective: a weighted sum of registry losses, parsed from an expression like "sigmoid + 0.5*sft"."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace

from torch import Tensor

from dpokit.core.errors import ConfigError
from dpokit.losses.base import LossInputs, LossOutput, LossParams, LossSpec
from dpokit.losses.likelihood import ld_weighted_logps
from dpokit.losses.registry import LOSSES
from dpokit.losses.state import LossState
from dpokit.losses.weighting import wpo_weights

_TERM = re.compile(r"^\s*(?:(?P<weight>[^*]+?)\s*\*\s*)?(?P<name>[A-Za-z_]\w*)\s*$")


@dataclass(frozen=True)
class Objective:
    """A weighted sum of losses, e.g. RPO = sigmoid + α·sft (Pang et al. 2024, arXiv 2404.19733).

    The trainer asks the objective what to compute (`needs_reference`, `ranked`, `chosen_only`, ...) and calls it;
    it never looks at loss names.

    Attributes:
        terms: (weight, spec) pairs; rewards (and so reward metrics) come from the first term.
        reference_free: treat reference log-probs as 0 (logratios are the policy log-probs alone).
        ld_alpha: LD-DPO's α (`loss.ld_alpha`): the terms that compare to a reference read log-probs whose tokens
            past the responses' shared length weigh α (`likelihood.ld_weighted_logps`); None: plain sums.
        use_weighting: WPO (`loss.use_weighting`): the sum of the terms, per pair, times the pair's weight
            (`weighting.wpo_weights`); as TRL, which weighs every term of its `loss_type` list alike.
        wpo_clamp: cap those weights at 1 (`loss.wpo_clamp`).
    """

    terms: tuple[tuple[float, LossSpec], ...]
    reference_free: bool = False
    ld_alpha: float | None = None
    use_weighting: bool = False
    wpo_clamp: bool = LossParams.wpo_clamp  # loss.wpo_clamp's default: one home

    @property
    def needs_reference(self) -> bool:
        """True if the trainer must compute reference log-probs."""
        return not self.reference_free and any(spec.needs_reference for _, spec in self.terms)

    @property
    def ranked(self) -> bool:
        """True if every term accepts K > 2 responses; otherwise the data layer expands ranked lists into pairs."""
        return all(spec.ranked for _, spec in self.terms)

    @property
    def unpaired(self) -> bool:
        """True for KTO-style batches: [completion, mismatched completion] with labels."""
        return any(spec.unpaired for _, spec in self.terms)

    @property
    def chosen_only(self) -> bool:
        """True if every term reads only each example's best response (Preferred-FT): the rest need not be loaded."""
        return all(spec.chosen_only for _, spec in self.terms)

    @property
    def needs_reference_distributions(self) -> bool:
        """True if a term reads the reference's next-token distributions (`kl`): the trainer then computes
        `LossInputs.kl` with a live reference model; cached reference log-probs cannot give it."""
        return any(spec.needs_reference_distributions for _, spec in self.terms)

    @property
    def needs_reference_token_logps(self) -> bool:
        """True if the trainer must give `LossInputs.reference_token_logps` (LD-DPO re-weights the reference's
        tokens): a live reference; a cache holds summed log-probs only."""
        return self.ld_alpha is not None and self.needs_reference

    @property
    def needs_log_sum_sq_probs(self) -> bool:
        """True if the trainer must give `LossInputs.log_sum_sq_probs` (WPO's weights): the policy's LM head computes
        log Σ_v πθ(v)² at each response token, in whichever log-prob path the batch takes."""
        return self.use_weighting

    @property
    def num_responses(self) -> int | None:
        """The number of responses per prompt a term requires exactly (TPO's triples), else None."""
        return next((spec.num_responses for _, spec in self.terms if spec.num_responses), None)

    def __call__(self, inputs: LossInputs, params: LossParams, state: LossState | None = None) -> LossOutput:
        """Σ_i w_i · L_i per example (times WPO's pair weight with `use_weighting`); rewards from the first term.

        Args:
            state: the running means the trainer keeps (`statistics`, `state.LossState`); None: a fresh state that
                has seen this batch alone (one process), as at a run's first micro-batch.

        Returns:
            LossOutput with losses (B,) and rewards (B, K).
        """
        if state is None:
            state = LossState()
            state.update(self.statistics(inputs, params), lambda values: values)
        per_term = self._term_inputs(inputs)
        outputs = [spec.fn(replace(term, running_mean=state.mean(spec.name)) if spec.running_statistic else term,
                           params, self.reference_free)
                   for (_, spec), term in zip(self.terms, per_term, strict=True)]
        losses = sum(weight * out.losses for (weight, _), out in zip(self.terms, outputs, strict=True))
        if self.use_weighting:
            losses = losses * self._pair_weights(inputs)
        return LossOutput(losses=losses, rewards=outputs[0].rewards)

    def statistics(self, inputs: LossInputs, params: LossParams) -> dict[str, Tensor]:
        """This micro-batch's (2,) [sum, count] of each term that keeps a running mean (`LossSpec.running_statistic`),
        by term name; empty for most objectives. The trainer sums them over processes into its `LossState`."""
        if not any(spec.running_statistic for _, spec in self.terms):
            return {}  # most objectives: no term inputs to build (LD-DPO's sums are built once, by __call__)
        stats = {}
        for (_, spec), term in zip(self.terms, self._term_inputs(inputs), strict=True):
            value = spec.running_statistic(term, params, self.reference_free) if spec.running_statistic else None
            if value is not None:
                stats[spec.name] = value
        return stats

    def _term_inputs(self, inputs: LossInputs) -> list[LossInputs]:
        """What each term reads: LD-DPO's weighted sums for the terms with a reference, else `inputs`."""
        weighted = self._ld_weighted(inputs) if self.ld_alpha is not None else inputs
        return [weighted if spec.needs_reference else inputs for _, spec in self.terms]

    def _pair_weights(self, inputs: LossInputs) -> Tensor:
        """(B,) WPO weights from the policy's plain summed log-probs (not LD-DPO's) and `log_sum_sq_probs`."""
        if inputs.log_sum_sq_probs is None:
            raise ValueError("loss.use_weighting needs log_sum_sq_probs of shape (B, 2): the trainer computes them "
                             "when the objective needs_log_sum_sq_probs")
        return wpo_weights(inputs.policy_logps, inputs.log_sum_sq_probs, inputs.num_tokens, self.wpo_clamp)

    def _ld_weighted(self, inputs: LossInputs) -> LossInputs:
        """`inputs` with LD-DPO's weighted sums in place of the policy's (and the reference's) summed log-probs."""
        if inputs.policy_token_logps is None or inputs.token_mask is None:
            raise ValueError("loss.ld_alpha needs policy_token_logps and token_mask of shape (B, K, T)")
        policy = ld_weighted_logps(inputs.policy_token_logps, inputs.token_mask, self.ld_alpha)
        if not self.needs_reference:
            return replace(inputs, policy_logps=policy)
        if inputs.reference_token_logps is None:
            raise ValueError("loss.ld_alpha needs reference_token_logps of shape (B, K, T): the trainer computes them "
                             "when the objective needs_reference_token_logps")
        reference = ld_weighted_logps(inputs.reference_token_logps, inputs.token_mask, self.ld_alpha)
        return replace(inputs, policy_logps=policy, reference_logps=reference)

    def __str__(self) -> str:
        parts = [spec.name if weight == 1 else f"{weight:g}*{spec.name}" for weight, spec in self.terms]
        return " + ".join(parts)


def _parse_term(text: str, key: str) -> tuple[float, LossSpec]:
    match = _TERM.match(text)
    if match is None:
        raise ConfigError(f"{key}: cannot parse term '{text.strip()}'; expected 'name' or 'weight*name'")
    weight = 1.0
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise ConfigError(f"{key}: weight '{match['weight']}' is not a number") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"{key}: weight of '{match['name']}' must be a finite number > 0, got {match['weight']}")
    name = match["name"]
    if name not in LOSSES:
        raise ConfigError(f"{key}: unknown loss '{name}'; known losses: {', '.join(sorted(LOSSES))}")
    return weight, LOSSES[name]


def parse_objective(expr: str, reference_free: bool = False, key: str = "loss.name") -> Objective:
    """Parses "name" or a weighted sum "name + w*name + ..." of registry losses.

    >>> str(parse_objective("sigmoid + 1e-1 * sft"))
    'sigmoid + 0.1*sft'

    Args:
        expr: the expression; weights are positive float literals, whitespace is free.
        reference_free: see `Objective.reference_free`.
        key: config key the expression came from, named in error messages.

    Raises:
        ConfigError: bad syntax, a non-positive weight, an unknown or repeated loss, an unpaired loss (kto)
            mixed with paired ones, or `kl` with reference_free.
    """
    if not expr.strip():
        raise ConfigError(f"{key}: empty loss expression; known losses: {', '.join(sorted(LOSSES))}")
    terms = tuple(_parse_term(text, key) for text in expr.split("+"))
    names = [spec.name for _, spec in terms]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{key}: loss {', '.join(repeated)} appears more than once in '{expr}'")
    if len({spec.unpaired for _, spec in terms}) > 1:
        raise ConfigError(f"{key}: '{expr}' mixes unpaired losses (kto) with paired ones; their batches differ")
    distributions = [spec.name for _, spec in terms if spec.needs_reference_distributions]
    if reference_free and distributions:
        raise ConfigError(f"{key}: loss '{distributions[0]}' measures the distance to the reference model, which "
                          "loss.reference_free=true switches off; drop one of them")
    return Objective(terms=terms, reference_free=reference_free)


def _require(ok: bool, key: str, condition: str, value: float) -> None:
    if not ok:
        raise ConfigError(f"config key 'loss.{key}' must be {condition}, got {value!r}")


def validate_params(objective: Objective, params: LossParams) -> None:
    """Checks the ranges of the hyper-parameters, what the objective's terms accept together with them (f-DPO
    scores, LD-DPO), then each term's own requirements (cdpo: 0 < ε < 0.5).

    The only place these ranges are checked: `trainer.config.Config.check` reaches them through `objective_from_config`.

    Raises:
        ConfigError: naming the key, e.g. "config key 'loss.beta' must be > 0, got -1.0".
    """
    _check_ranges(params)
    _check_combinations(objective, params)
    for _, spec in objective.terms:
        if spec.check is not None:
            spec.check(params)


def _check_ranges(p: LossParams) -> None:
    _require(math.isfinite(p.beta) and p.beta > 0, "beta", "> 0", p.beta)
    _require(0 <= p.label_smoothing < 0.5, "label_smoothing", "in [0, 0.5)", p.label_smoothing)
    _require(math.isfinite(p.simpo_gamma), "simpo_gamma", "finite", p.simpo_gamma)
    _require(math.isfinite(p.orpo_lambda) and p.orpo_lambda >= 0, "orpo_lambda", ">= 0", p.orpo_lambda)
    alpha = p.unlikelihood_alpha
    _require(math.isfinite(alpha) and alpha >= 0, "unlikelihood_alpha", ">= 0", alpha)
    for key in ("kto_desirable_weight", "kto_undesirable_weight"):
        value = getattr(p, key)
        _require(math.isfinite(value) and value > 0, key, "> 0", value)
    _require(math.isfinite(p.discopop_tau) and p.discopop_tau > 0, "discopop_tau", "> 0", p.discopop_tau)
    coef = p.f_alpha_divergence_coef
    _require(math.isfinite(coef), "f_alpha_divergence_coef", "finite", coef)
    _require(math.isfinite(p.alphapo_alpha), "alphapo_alpha", "finite", p.alphapo_alpha)
    _require(math.isfinite(p.tpo_alpha) and p.tpo_alpha >= 0, "tpo_alpha", ">= 0", p.tpo_alpha)
    if p.ld_alpha is not None:
        _require(0 <= p.ld_alpha <= 1, "ld_alpha", "in [0, 1] (or null)", p.ld_alpha)
    for key, spec in LossParams.__dataclass_fields__.items():  # the choices each field's metadata declares
        choices = spec.metadata.get("choices")
        if choices is not None and getattr(p, key) not in choices:
            raise ConfigError(f"config key 'loss.{key}' must be one of {', '.join(choices)}, got {getattr(p, key)!r}")


def _check_combinations(objective: Objective, p: LossParams) -> None:
    """f-DPO's scores only where β·log Z(x) cancels; LD-DPO only where responses share a prompt and a live layout."""
    if p.f_divergence_type != "reverse_kl":
        others = [spec.name for _, spec in objective.terms if not spec.f_divergence]
        if others:
            supported = ", ".join(name for name, spec in LOSSES.items() if spec.f_divergence)
            raise ConfigError(f"config key 'loss.f_divergence_type'={p.f_divergence_type} needs losses built on the "
                              f"chosen − rejected score difference ({supported}); '{others[0]}' is not")
    _check_weighting(objective, p)
    if p.ld_alpha is not None and (objective.unpaired or objective.needs_reference_distributions):
        what = "unpaired (kto) batches have no pair" if objective.unpaired else "the kl term reads distributions"
        raise ConfigError(f"config key 'loss.ld_alpha' down-weights the longer response of each pair past their "
                          f"shared length, but {what}: unset loss.ld_alpha")


def _check_weighting(objective: Objective, p: LossParams) -> None:
    """WPO weighs pairs: every term must take pairs and keep each pair's loss its own (aot sorts the batch)."""
    if not p.use_weighting:
        return
    if objective.ranked:
        raise ConfigError(f"config key 'loss.use_weighting' weighs pairs, but loss '{objective}' takes ranked lists "
                          "of any length: add a pairwise term or unset loss.use_weighting")
    others = [spec.name for _, spec in objective.terms if not spec.pair_weights]
    if others:
        raise ConfigError(f"config key 'loss.use_weighting' scales each pair's own loss, which loss '{others[0]}' "
                          "does not have (it sorts the batch, or reads lists, triples or unpaired rows): unset it")


def objective_from_config(loss: LossParams) -> tuple[Objective, LossParams]:
    """The objective of a config's `loss` section and a copy of its hyper-parameters, validated (no model loads
    before this).

    `loss` (`trainer.config.LossConfig`: `name`, `reference_free` and the fields of `LossParams`) extends
    `LossParams`, so the copy goes by LossParams' own fields: a new loss hyper-parameter
    is one field there, and it is a config key, documented and copied with nothing else to edit.

    Raises:
        ConfigError: the loss expression or a hyper-parameter is invalid, naming the config key.
    """
    objective = parse_objective(loss.name, reference_free=loss.reference_free)
    params = LossParams(**{f.name: getattr(loss, f.name) for f in fields(LossParams)})
    validate_params(objective, params)
    return replace(objective, ld_alpha=params.ld_alpha, use_weighting=params.use_weighting,
                   wpo_clamp=params.wpo_clamp), params
