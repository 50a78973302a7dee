"""Held-out evaluation and what a frontier run produces: one `Evaluator` scores every method's policy on the same
prompts with the same seed; its `Evaluation`s become `EvalPoint`s of a `RunResult`; all runs form a `FrontierResult`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from dpokit.core.progress import report
from dpokit.core.sections import SamplingSettings
from dpokit.experiments.frontier_config import FrontierConfig, MethodSpec
from dpokit.lm.sampling import Samples, sample
from dpokit.lm.sequence_kl import sequence_kl
from dpokit.rewards.preferences import PreferenceFiles, PreferenceStats
from dpokit.rewards.sources import Reward

EVAL_SEED_OFFSET = 2  # every held-out evaluation is drawn with seed + 2 (preference data: seed + 1, frontier.py)


@dataclass
class Evaluation:
    """One model on the held-out prompts.

    Attributes:
        reward: mean ground-truth reward of the sampled completions.
        reward_se: its standard error (std / sqrt(n)).
        kl: mean sequence KL(π‖πref) in nats (see `kl.py`).
        kl_se: its standard error.
        mean_tokens: mean completion length in tokens, eos included.
        samples: the completions themselves.
        rewards: (n,) per-completion rewards.
        kls: (n,) per-completion KL estimates.
    """

    reward: float
    reward_se: float
    kl: float
    kl_se: float
    mean_tokens: float
    samples: Samples
    rewards: list[float]
    kls: list[float]

    def summary(self) -> dict[str, float]:
        return {"gt_reward": self.reward, "gt_reward_se": self.reward_se, "kl": self.kl, "kl_se": self.kl_se,
                "mean_tokens": self.mean_tokens}


class Evaluator:
    """Scores a policy against the fixed reference on held-out prompts, with the same seed every time."""

    def __init__(self, reference: torch.nn.Module, tokenizer, prompts: list[str], reward: Reward,
                 settings: SamplingSettings, num_samples: int = 1, seed: int = 0, chat: bool = False):
        self.reference, self.tokenizer, self.prompts, self.reward = reference, tokenizer, prompts, reward
        self.settings, self.num_samples, self.seed, self.chat = settings, num_samples, seed, chat

    def __call__(self, policy: torch.nn.Module) -> Evaluation:
        samples = sample(policy, self.tokenizer, self.prompts, self.settings, self.seed, self.num_samples,
                         chat=self.chat)
        rewards = self.reward(samples.prompts, samples.completions)
        kls = sequence_kl(policy, self.reference, samples.prompt_ids, samples.completion_ids).tolist()
        lengths = [len(ids) for ids in samples.completion_ids]
        return Evaluation(mean_of(rewards), standard_error(rewards), mean_of(kls), standard_error(kls),
                          mean_of(lengths), samples, rewards, kls)


@dataclass
class EvalPoint:
    """One evaluation of one run: a point of the frontier plot."""

    label: str
    setting: str
    slug: str
    step: int
    reward: float
    reward_se: float
    kl: float
    kl_se: float
    mean_tokens: float


def point(method: MethodSpec, step: int, result: Evaluation) -> EvalPoint:
    """`result` as a point of `method`'s series at `step`."""
    return EvalPoint(method.label, method.setting, method.slug, step, result.reward, result.reward_se, result.kl,
                     result.kl_se, result.mean_tokens)


class Recorder:
    """A training callback that evaluates the policy, keeps each `EvalPoint` and the last `Evaluation`, prints a
    line, and returns the numbers for the run's metrics.jsonl."""

    def __init__(self, evaluator: Evaluator, method: MethodSpec, unit: str = "step"):
        self.evaluator, self.method, self.unit = evaluator, method, unit
        self.points: list[EvalPoint] = []
        self.last: Evaluation | None = None

    def __call__(self, step: int, policy: torch.nn.Module) -> dict[str, float]:
        result = self.last = self.evaluator(policy)
        self.points.append(point(self.method, step, result))
        report(f"  {self.unit} {step}: reward {result.reward:+.3f} ± {result.reward_se:.3f}, KL {result.kl:.2f} ± "
            f"{result.kl_se:.2f}")
        return result.summary()


@dataclass
class RunResult:
    """One method's run: its evaluations in order (`points`), the last one in full, its length (optimizer steps,
    PPO iterations, 0 for Best-of-N), wall time, and for the preference-trained runs the label budget."""

    method: MethodSpec
    run_dir: str
    points: list[EvalPoint]
    final: Evaluation
    steps: int
    seconds: float
    label_calls: int | None = None  # reward calls its training data cost (the offline data's, or online's own)


@dataclass
class FrontierResult:
    """Everything the report needs.

    Attributes:
        reference: πref (the SFT model) evaluated at step 0; every run starts from this point.
        runs: one per method, in the order run.
        preferences: what the preference files hold.
        reward_name: the reward's name.
        config: the experiment that was run.
        seconds: wall time of the whole protocol.
    """

    reference: Evaluation
    runs: list[RunResult]
    preferences: PreferenceStats
    reward_name: str
    config: FrontierConfig
    seconds: float
    reward_model: RewardModelInfo | None = None


@dataclass
class RewardModelInfo:
    """The reward model learned for `reward: learned` methods (frontier_rlhf.train_learned_reward).

    Attributes:
        path: its directory (loads as a reward: `load_reward(path)`).
        train_pairs: pairs it trained on.
        eval_pairs: pairs of the held-out training prompts it did not train on.
        eval_prompts: how many training prompts were held out.
        accuracy: fraction of held-out pairs it scores chosen above rejected.
        steps: optimizer steps.
        seconds: training time.
    """

    path: str
    train_pairs: int
    eval_pairs: int
    eval_prompts: int
    accuracy: float
    steps: int
    seconds: float


@dataclass
class MethodContext:
    """What every method's runner gets: the experiment, the preference files, the one evaluator (πref, tokenizer,
    held-out prompts, sampling settings), and the rewards a method may use by name ("ground_truth", and "learned"
    when some method needs it)."""

    cfg: FrontierConfig
    files: PreferenceFiles
    evaluator: Evaluator
    rewards: dict[str, Reward]
    bon_draws: dict[str, Any] = field(default_factory=dict)  # selection reward -> Best-of-N's one draw (frontier_rlhf)


def mean_of(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def standard_error(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    mean = mean_of(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)

