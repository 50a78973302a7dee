"""Statistics a loss keeps across steps (BCO's reward shift δ), held by the trainer, which never learns which loss.

A `LossSpec` declares a `running_statistic`; the trainer, at every training micro-batch::

    stats = objective.statistics(inputs, params)     this process's (sum, count) per declaring term
    state.update(stats, parallel.sum)                summed over the processes, folded into the running means
    objective(inputs, params, state)                 each term reads its running mean (this micro-batch included)

Evaluation reads the state without updating it. The means go into every checkpoint (`state_dict`), so a resumed run
continues with the δ an unbroken run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor


@dataclass
class RunningMean:
    """The mean of every value observed so far: count-weighted, updated as TRL's `RunningMoments.update` does
    (mean += (x̄ − mean)·n / (count + n)), in float64."""

    mean: float = 0.0
    count: float = 0.0

    def update(self, total: float, count: float) -> None:
        """Folds in `count` values summing to `total`; nothing when count is 0."""
        if count <= 0:
            return
        self.count += count
        self.mean += (total / count - self.mean) * count / self.count


class LossState:
    """The running means of the terms that declare a statistic, by term name; empty for every other objective."""

    def __init__(self) -> None:
        self.means: dict[str, RunningMean] = {}

    def update(self, stats: dict[str, Tensor], sum_across: Callable[[list[float]], list[float]]) -> None:
        """Folds in one micro-batch's (sum, count) per term, first summed over the processes by `sum_across`.

        Every process calls this with the same terms in the same order (the same objective), so the collective
        matches; with one process `sum_across` returns its input."""
        if not stats:
            return
        names = sorted(stats)
        local = [float(v) for name in names for v in stats[name].detach().double().tolist()]
        summed = sum_across(local)
        for i, name in enumerate(names):
            self.means.setdefault(name, RunningMean()).update(summed[2 * i], summed[2 * i + 1])

    def mean(self, name: str) -> float:
        """The running mean of term `name`'s statistic; 0 before any update."""
        held = self.means.get(name)
        return held.mean if held is not None else 0.0

    def state_dict(self) -> dict[str, dict[str, float]]:
        """JSON-ready: {term: {"mean": ..., "count": ...}} (Python floats round-trip JSON exactly)."""
        return {name: {"mean": m.mean, "count": m.count} for name, m in sorted(self.means.items())}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        self.means = {name: RunningMean(float(v["mean"]), float(v["count"])) for name, v in state.items()}
