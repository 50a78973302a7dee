"""Preference losses over per-sequence log-probs: pure functions, one registry, and a weighted-sum objective.

Layout: `pairwise.py` (DPO family, EXO, DiscoPOP, SimPO, AlphaPO, ORPO), `anchored.py` (NCA, BCO, SPPO, APO),
`transport.py` (AOT), `listwise.py` (Plackett-Luce, TPO), `likelihood.py` (SFT, Unlikelihood, LD-DPO's weighting),
`unpaired.py` (KTO), `kl.py` (the KL(πθ‖πref) regulariser) hold the pure functions; `divergence.py` f-DPO's scores;
`weighting.py` WPO's pair weights; `state.py` the running statistics a loss keeps across steps (BCO's δ);
`base.py` the shared types; `registry.py` maps names to `LossSpec`s, with `adapters.py` reading each newer loss's
inputs; `objective.py` parses "sigmoid + 0.5*sft" into an `Objective` the trainer calls, and `objective_from_config`
builds it with its validated `LossParams` from a run's config.
"""

from dpokit.losses.anchored import apo_down_loss, apo_zero_loss, bco_loss, nca_loss, sppo_hard_loss
from dpokit.losses.base import LossInputs, LossOutput, LossParams, LossSpec
from dpokit.losses.divergence import f_divergence_scores
from dpokit.losses.kl import token_kl_loss
from dpokit.losses.likelihood import batch_token_nll, ld_weighted_logps, log1mexp, sft_loss, unlikelihood_loss
from dpokit.losses.listwise import plackett_luce_loss, tpo_loss
from dpokit.losses.objective import Objective, objective_from_config, parse_objective, validate_params
from dpokit.losses.pairwise import (
    alphapo_loss,
    discopop_loss,
    exo_loss,
    hinge_loss,
    ipo_loss,
    orpo_loss,
    robust_loss,
    sigmoid_loss,
    simpo_loss,
)
from dpokit.losses.registry import LOSSES
from dpokit.losses.state import LossState, RunningMean
from dpokit.losses.transport import aot_loss, aot_unpaired_loss
from dpokit.losses.unpaired import kto_loss
from dpokit.losses.weighting import wpo_weights

__all__ = [
    "LOSSES",
    "LossInputs",
    "LossOutput",
    "LossParams",
    "LossSpec",
    "LossState",
    "Objective",
    "RunningMean",
    "alphapo_loss",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "batch_token_nll",
    "bco_loss",
    "discopop_loss",
    "exo_loss",
    "f_divergence_scores",
    "hinge_loss",
    "ipo_loss",
    "kto_loss",
    "ld_weighted_logps",
    "log1mexp",
    "nca_loss",
    "objective_from_config",
    "orpo_loss",
    "parse_objective",
    "plackett_luce_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_loss",
    "simpo_loss",
    "sppo_hard_loss",
    "token_kl_loss",
    "tpo_loss",
    "unlikelihood_loss",
    "validate_params",
    "wpo_weights",
]
