"""Best-of-N: draw N completions of each prompt from πref, score them with a reward, keep the best.

Best-of-N needs no training and is the strongest simple baseline of a reward–KL frontier. Its policy π_N has a
closed-form KL to πref (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy",
arXiv 2401.01879; the formula is folklore from Stiennon et al. 2020):

    KL(π_N ‖ πref) ≤ log N − (N − 1)/N

with equality when the reward has no ties of positive probability (continuous outcomes). Sketch: with u = F(y) the
reward's CDF under πref, u ~ Uniform(0, 1) and the best of N has density N·u^(N−1), so KL = E[log N u^(N−1)] =
log N + (N − 1)·E[log u] = log N − (N − 1)/N. On a finite set of outcomes (`best_of_n_probs`) the exact KL is lower;
it approaches the formula as the largest outcome probability goes to 0 (tests/unit/test_bon.py checks both).

Ties are broken by sample order: the earliest of the best samples is chosen, so a run is reproducible from its seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dpokit.core.errors import ConfigError
from dpokit.core.sections import SamplingSettings
from dpokit.lm.sampling import sample
from dpokit.rewards.sources import Reward

if TYPE_CHECKING:
    from dpokit.core.sections import SamplingSettings
    from dpokit.lm.sampling import Samples

Prompt = str | list[dict]


def analytic_kl(n: int) -> float:
    """log n − (n − 1)/n: KL(π_N ‖ πref) of best-of-n without reward ties, in nats (0 for n = 1).

    >>> round(analytic_kl(4), 4), analytic_kl(1)
    (0.6363, 0.0)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def select_best(scores: Sequence[float]) -> int:
    """Index of the highest score; among equal scores the earliest, so ties are broken by sample order.

    >>> select_best([0.1, 0.7, 0.3, 0.7])
    1
    """
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def best_of_n_probs(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> torch.Tensor:
    """The exact distribution of the selected outcome when n i.i.d. draws from `probs` are reduced by `select_best`.

    Outcomes whose reward is r form one level with mass q_r; with F(r) = P(reward ≤ r) and F(r−) = P(reward < r),
    the best reward is r with probability F(r)^n − F(r−)^n. The chosen sample is the first to reach that level,
    whose outcome is distributed as `probs` within the level: p_N(y) = (F(r)^n − F(r−)^n) · p(y) / q_r. Without
    ties this is the textbook F(y)^n − F(y−)^n.

    Args:
        probs: (M,) probabilities of M outcomes (summing to 1).
        rewards: (M,) each outcome's reward.
        n: draws per selection.

    Returns:
        (M,) float64 probabilities p_N.
    """
    probs, rewards = probs.double(), rewards.double()
    levels, level_of = torch.unique(rewards, sorted=True, return_inverse=True)
    mass = torch.zeros(len(levels), dtype=torch.float64).index_add_(0, level_of, probs)
    upper = mass.cumsum(0).clamp(max=1.0)
    level_best = upper**n - (upper - mass).clamp(min=0.0) ** n
    share = torch.where(mass[level_of] > 0, probs / mass[level_of], 0.0)
    return level_best[level_of] * share


def exact_kl(probs: torch.Tensor, rewards: torch.Tensor, n: int) -> float:
    """KL(p_N ‖ p) in nats for a finite distribution (`best_of_n_probs`); at most `analytic_kl(n)`."""
    p_n = best_of_n_probs(probs, rewards, n)
    kept = p_n > 0
    return float((p_n[kept] * (p_n[kept] / probs.double()[kept]).log()).sum())


@dataclass
class BestOfN:
    """N scored samples of each prompt and the chosen one.

    Attributes:
        prompts: P prompts, as given.
        completions: (P, n) completions, in sample order.
        rewards: (P, n) their rewards.
        best: (P,) index of the chosen completion of each prompt (`select_best`).
        samples: the flat draw behind it (P·n entries, all of prompt 0's first), with token ids.
        reward_name: the reward's name, for reports.
        own_distribution: the samples follow the model's own distribution (temperature 1, top-p 1), so the
            analytic KL is to the model itself; otherwise it is to the tempered / truncated sampler.
    """

    prompts: list[Prompt]
    completions: list[list[str]]
    rewards: list[list[float]]
    best: list[int]
    samples: Samples
    reward_name: str = "reward"
    own_distribution: bool = True

    @property
    def n(self) -> int:
        return len(self.rewards[0])

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready record per prompt: every sample with its reward, the chosen index, completion and reward."""
        return [
            {"prompt": prompt, "samples": [{"completion": c, "reward": r} for c, r in zip(texts, scores, strict=True)],
             "best": best, "completion": texts[best], "reward": scores[best]}
            for prompt, texts, scores, best in zip(self.prompts, self.completions, self.rewards, self.best, strict=True)
        ]

    def write_jsonl(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in self.rows()), encoding="utf-8")

    def summary(self) -> dict[str, float]:
        """Mean reward of the chosen samples against the mean of all samples, and the analytic KL of best-of-n."""
        every = [r for scores in self.rewards for r in scores]
        chosen = [scores[b] for scores, b in zip(self.rewards, self.best, strict=True)]
        return {"n": self.n, "prompts": len(self.prompts), "best_reward": sum(chosen) / len(chosen),
                "mean_reward": sum(every) / len(every), "analytic_kl": analytic_kl(self.n)}


@dataclass(frozen=True)
class BonPoint:
    """Best-of-N at one N, as a point of the reward–KL frontier (x = the analytic KL).

    Attributes:
        n: samples per prompt.
        kl: `analytic_kl(n)`, nats.
        reward: mean reward of the chosen sample over prompts.
        reward_se: its standard error over prompts.
    """

    n: int
    kl: float
    reward: float
    reward_se: float


def best_of_n(model: torch.nn.Module, tokenizer, prompts: Sequence[Prompt], reward: Reward | Callable,
              n: int, settings: SamplingSettings, seed: int = 0, chat: bool = False,
              progress: bool = False) -> BestOfN:
    """Samples `n` completions of every prompt from `model` (`lm.sampling.sample`), scores them and picks the best.

    Args:
        model: πref; at temperature 1 (no top-p) the samples are its own distribution, as best-of-N assumes.
        reward: a `Reward`, or any `fn(prompts, completions) -> scores` (checked the same way).
        n: samples per prompt. To compare several N, take the first N samples of one draw (`frontier_points`):
            a second draw with another n is a different draw, not an extension of this one.
        chat: render prompts with the tokenizer's chat template and stop at its end of turn.

    Returns:
        Every sample with its reward, and the chosen index per prompt (ties: the earliest sample).
    """

    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    score = reward if isinstance(reward, Reward) else Reward(getattr(reward, "__name__", "reward"), reward)
    samples = sample(model, tokenizer, list(prompts), settings, seed, n, progress=progress, chat=chat)
    flat = score(samples.prompts, samples.completions)
    rewards = [flat[i:i + n] for i in range(0, len(flat), n)]
    completions = [samples.completions[i:i + n] for i in range(0, len(flat), n)]
    own = settings.temperature == 1 and settings.top_p == 1
    return BestOfN(list(prompts), completions, rewards, [select_best(r) for r in rewards], samples, score.name, own)


def chosen_indices(rewards: Sequence[Sequence[float]], n: int) -> list[int]:
    """Per prompt, the index of best-of-n among its first `n` samples (`select_best`: ties to the earliest).

    >>> chosen_indices([[0.1, 0.9, 0.5], [0.4, 0.2, 0.8]], 2)
    [1, 0]
    """
    return [select_best(scores[:n]) for scores in rewards]


def frontier_points(result: BestOfN, ns: Sequence[int]) -> list[BonPoint]:
    """Best-of-N for each N in `ns` from one draw: each prompt's first N samples, so the N share their samples.
    The reward of a point is that of the selection (`evaluated_points` scores the chosen samples by another one).

    Raises:
        ConfigError: an N is < 1 or larger than the draw.
    """
    return evaluated_points(result, ns, result.rewards)


def evaluated_points(result: BestOfN, ns: Sequence[int], scores: Sequence[Sequence[float]]) -> list[BonPoint]:
    """Best-of-N selected by `result.rewards` (e.g. a learned reward model), valued by `scores` of the same samples
    (e.g. the ground-truth reward): the frontier of a proxy reward, measured by the true one.

    Args:
        result: the draw, with the selection reward's scores.
        ns: the N to evaluate, each <= `result.n`.
        scores: (P, result.n) the evaluation reward of every sample, in the draw's order.

    Raises:
        ConfigError: an N is < 1 or larger than the draw.
    """
    points = []
    for n in ns:
        if not 1 <= n <= result.n:
            raise ConfigError(f"best-of-{n} needs 1 <= N <= the {result.n} samples drawn per prompt")
        best = chosen_indices(result.rewards, n)
        chosen = [row[b] for row, b in zip(scores, best, strict=True)]
        mean = sum(chosen) / len(chosen)
        var = sum((c - mean) ** 2 for c in chosen) / (len(chosen) - 1) if len(chosen) > 1 else math.nan
        points.append(BonPoint(n, analytic_kl(n), mean, math.sqrt(var / len(chosen))))
    return points


def best_of_n_frontier(model: torch.nn.Module, tokenizer, prompts: Sequence[Prompt], reward: Reward | Callable,
                       ns: Sequence[int], settings: SamplingSettings, seed: int = 0,
                       chat: bool = False) -> list[BonPoint]:
    """Best-of-N points for every N in `ns` (e.g. 4, 16, 64) from one draw of max(ns) samples per prompt."""
    return frontier_points(best_of_n(model, tokenizer, prompts, reward, max(ns), settings, seed, chat), ns)


def summary_text(result: BestOfN) -> str:
    """The printed summary of a run."""
    s = result.summary()
    to = "πref" if result.own_distribution else "the tempered sampler, not πref"
    return (f"best-of-{s['n']} over {s['prompts']} prompts, reward {result.reward_name}: best "
            f"{s['best_reward']:+.4f} vs mean of all samples {s['mean_reward']:+.4f}; analytic KL(best-of-{s['n']} ‖ "
            f"{to}) = log N − (N−1)/N = {s['analytic_kl']:.4f} nats")
