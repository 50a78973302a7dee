"""Preference metrics accumulated as sums over examples, so means are over pairs whatever the batching."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from dpokit.lm.logprobs import SequenceLogps
from dpokit.losses import LossOutput, token_kl_loss

KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
        "logps/rejected", "kl/token")


class PreferenceMetrics:
    """Sums of per-example quantities; `means()` divides by the number of examples that contributed.

    A subclass reports other quantities by overriding `keys` and `add` (e.g. `rlhf.reward_train.RewardMetrics`).
    """

    keys: tuple[str, ...] = KEYS

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, out: LossOutput, logps: SequenceLogps, labels: Tensor | None = None) -> None:
        rewards, seq = out.rewards.float(), logps.logps.detach().float()
        self._add("loss", out.losses.detach().float())
        if logps.kl is not None:  # the `kl` term's value, unweighted: per-token KL(πθ‖πref) over all responses
            self._add("kl/token", token_kl_loss(logps.kl.detach().float(), logps.num_tokens))
        if labels is not None:  # unpaired: column 0 is each record's own completion, good or bad
            self._add("rewards/chosen", rewards[labels, 0])
            self._add("rewards/rejected", rewards[~labels, 0])
            self._add("logps/chosen", seq[labels, 0])
            self._add("logps/rejected", seq[~labels, 0])
            return
        self._add("rewards/chosen", rewards[:, 0])
        self._add("logps/chosen", seq[:, 0])
        if rewards.shape[1] > 1:  # best vs worst response of each example
            self._add("rewards/rejected", rewards[:, -1])
            self._add("rewards/accuracies", (rewards[:, 0] > rewards[:, -1]).float())
            self._add("rewards/margins", rewards[:, 0] - rewards[:, -1])
            self._add("logps/rejected", seq[:, -1])

    def _add(self, key: str, values: Tensor) -> None:
        self.sums[key] += values.sum().item()
        self.counts[key] += values.numel()

    def reduce(self, sum_across: Callable[[list[float]], list[float]]) -> None:
        """Replaces this process's sums and counts with their totals over all processes."""
        keys = self.keys
        values = sum_across([self.sums.get(k, 0.0) for k in keys] + [float(self.counts.get(k, 0)) for k in keys])
        self.sums = defaultdict(float, zip(keys, values[: len(keys)], strict=True))
        self.counts = defaultdict(int, ((k, int(c)) for k, c in zip(keys, values[len(keys):], strict=True)))

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.keys if self.counts.get(k)}

    @property
    def num_examples(self) -> int:
        return self.counts.get("loss", 0)


class JsonlWriter:
    """Appends one JSON object per line; NaN/inf are written as null so every line is valid JSON."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lines = len(self.path.read_text().splitlines()) if self.path.is_file() else 0  # a resumed run's
        self.file = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()
        self.lines += 1

    def close(self) -> None:
        self.file.close()


class NullWriter:
    """What processes other than the main one write to: nothing, so the loop never asks "am I the main one?"."""

    lines = 0

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def trim_jsonl(path: Path, lines: int) -> None:
    """Keeps the first `lines` lines of a metrics file (a resumed run continues from its checkpoint's line count)."""
    kept = path.read_text().splitlines(keepends=True) if path.is_file() else []
    path.write_text("".join(kept[:lines]))
