"""Preference losses over per-sequence log-probs: pure functions, one registry, and a weighted-sum objective.

Layout: `pairwise.py` (DPO family, SimPO, ORPO), `listwise.py` (Plackett-Luce), `likelihood.py` (SFT,
Unlikelihood), `unpaired.py` (KTO), `kl.py` (the KL(πθ‖πref) regulariser) hold the pure functions; `base.py` the
shared types; `registry.py` maps names to `LossSpec`s; `objective.py` parses "sigmoid + 0.5*sft" into an
`Objective` the trainer calls, and `objective_from_config` builds it with its validated `LossParams` from a run's
config.
"""

from dpokit.losses.base import LossInputs, LossOutput, LossParams, LossSpec
from dpokit.losses.kl import token_kl_loss
from dpokit.losses.likelihood import log1mexp, sft_loss, unlikelihood_loss
from dpokit.losses.listwise import plackett_luce_loss
from dpokit.losses.objective import Objective, objective_from_config, parse_objective, validate_params
from dpokit.losses.pairwise import hinge_loss, ipo_loss, orpo_loss, robust_loss, sigmoid_loss, simpo_loss
from dpokit.losses.registry import LOSSES
from dpokit.losses.unpaired import kto_loss

__all__ = [
    "LOSSES",
    "LossInputs",
    "LossOutput",
    "LossParams",
    "LossSpec",
    "Objective",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "log1mexp",
    "objective_from_config",
    "orpo_loss",
    "parse_objective",
    "plackett_luce_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_loss",
    "simpo_loss",
    "token_kl_loss",
    "unlikelihood_loss",
    "validate_params",
]
