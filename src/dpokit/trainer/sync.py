"""TR-DPO's reference updates (Gorbatovski et al. 2024, arXiv 2404.09656): every τ optimizer steps the frozen
reference moves toward the policy, softly (πref ← α·πθ + (1 − α)·πref, parameter by parameter) or by a hard copy.

A reference behaviour, not a loss: any objective with a live, separate reference copy takes it (`reference.sync`).
`trainer.assembly.plan_reference` refuses what cannot work before any model loads; the loop calls `after_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpokit.core.errors import ConfigError


class NoSync:
    """The reference stays as loaded (reference.sync.mode=none)."""

    def after_step(self, step: int) -> None:
        """Nothing to do."""


@dataclass
class ReferenceSync:
    """Mixes `reference`'s parameters toward `policy`'s after every `every`-th optimizer step.

    Attributes:
        reference: the frozen reference copy (`lm.reference.FrozenModel.model`).
        policy: the model being trained, with the same parameter names and shapes.
        mode: "soft" (ref ← α·policy + (1 − α)·ref) or "hard" (ref ← policy).
        alpha: α in (0, 1] of the soft update.
        every: τ, optimizer steps between updates.
    """

    reference: torch.nn.Module
    policy: torch.nn.Module
    mode: str
    alpha: float
    every: int

    def __post_init__(self) -> None:
        ours, theirs = dict(self.reference.named_parameters()), dict(self.policy.named_parameters())
        if ours.keys() != theirs.keys() or any(ours[n].shape != theirs[n].shape for n in ours):
            raise ConfigError("reference.sync mixes the reference toward the policy parameter by parameter, but their "
                              "parameters differ (reference.name_or_path of another architecture?): unset one of them")
        self._pairs = [(ours[name], theirs[name]) for name in ours]

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Updates the reference if `step` (1-based, optimizer steps done) is a multiple of `every`."""
        if step % self.every:
            return
        for ref, live in self._pairs:
            if self.mode == "hard":
                ref.copy_(live)
            else:
                ref.lerp_(live.to(ref.dtype), self.alpha)
