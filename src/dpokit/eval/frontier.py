"""The DPO paper's controlled experiment (§6.1, Fig. 2 left) on any model, prompts and reward: who buys the most
reward for the least KL from the reference?

Call tree of `run_frontier`:

    run_frontier
    ├── build_preferences      πref samples K completions per training prompt, scored -> pairs.jsonl, ranked.jsonl
    ├── Evaluator(πref)        step 0: πref on held-out prompts (its KL to itself is 0)
    └── run_method, per method dpokit's own `train()` from πref, with a callback every `train.eval_every` steps:
        └── Evaluator(policy)  sample held-out completions -> mean reward, mean sequence KL(π‖πref)

Every evaluation samples the same held-out prompts with the same seed, so points differ by the model, not the draw.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpokit import config as config_io
from dpokit.config import Config, ModelConfig
from dpokit.data.chat import has_template
from dpokit.errors import DataError
from dpokit.eval.frontier_config import FrontierConfig, MethodSpec
from dpokit.eval.kl import sequence_kl
from dpokit.eval.preferences import PreferenceFiles, PreferenceStats, build_preferences
from dpokit.eval.rewards import Reward
from dpokit.eval.sampling import Samples, SamplingSettings, sample
from dpokit.losses import parse_objective
from dpokit.models import load_model, load_tokenizer

PREFERENCE_SEED_OFFSET = 1  # preference samples are drawn with seed + 1 ...
EVAL_SEED_OFFSET = 2  # ... and every held-out evaluation with seed + 2, so the two draws differ


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
        return Evaluation(_mean(rewards), _se(rewards), _mean(kls), _se(kls), _mean(lengths), samples, rewards, kls)


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


@dataclass
class RunResult:
    method: MethodSpec
    run_dir: str
    points: list[EvalPoint]
    final: Evaluation
    steps: int
    seconds: float


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


def run_frontier(cfg: FrontierConfig, reward: Reward) -> FrontierResult:
    """Preference data from πref's samples, then every method's run from πref, evaluated as it trains."""
    start = time.perf_counter()
    cfg.check()
    out = Path(cfg.output_dir)
    check_methods(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.model)
    reference = load_model(cfg.model, ModelConfig()).to(device).eval().requires_grad_(False)
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size)
    chat = has_template(tokenizer) if cfg.chat is None else cfg.chat

    _say(f"preference data: {cfg.samples_per_prompt} samples for each of {len(cfg.train_prompts)} prompts")
    files = build_preferences(reference, tokenizer, cfg.train_prompts, reward, cfg.samples_per_prompt, settings,
                              out / "data", seed=cfg.seed + PREFERENCE_SEED_OFFSET, progress=cfg.progress, chat=chat)
    if files.stats.pairs == 0:
        raise DataError("every sampled pair tied or was dropped; no preferences to learn from (try more prompts or "
                        "a reward that separates completions)", source=str(files.pairs_path))
    evaluator = Evaluator(reference, tokenizer, cfg.eval_prompts, reward, settings, cfg.eval_samples_per_prompt,
                          seed=cfg.seed + EVAL_SEED_OFFSET, chat=chat)
    at_start = evaluator(reference)
    _say(f"πref on {len(at_start.rewards)} held-out samples: reward {at_start.reward:.3f}, KL {at_start.kl:.3f}")
    runs = []
    for i, method in enumerate(cfg.methods, start=1):
        _say(f"[{i}/{len(cfg.methods)}] {method.label} {method.setting}".rstrip())
        runs.append(run_method(cfg, method, files, evaluator))
    return FrontierResult(at_start, runs, files.stats, reward.name, cfg, time.perf_counter() - start)


def method_config(cfg: FrontierConfig, method: MethodSpec, files: PreferenceFiles) -> tuple[Config, bool]:
    """The `dpokit train` config of one run, and whether it trains on the best completion only (Preferred-FT).

    Batches are compute-matched: unless the method sets train.batch_size itself, every run processes
    2 × train.batch_size sequences per step (B pairs, 2B/K ranked lists of K, or 2B best completions).
    """
    objective = parse_objective(method.loss)
    chosen_only, ranked = objective.chosen_only, objective.ranked
    layers = {
        "model.name_or_path": cfg.model, "train.output_dir": str(Path(cfg.output_dir) / "runs" / method.slug),
        "data.path": str(files.ranked_path if ranked else files.pairs_path),
        "data.format": "ranked" if ranked else "explicit", "train.seed": cfg.seed, "loss.name": method.loss,
        "train.progress": cfg.progress,
    }
    if method.beta is not None:
        layers["loss.beta"] = method.beta
    if method.alpha is not None:
        layers["loss.unlikelihood_alpha"] = method.alpha
    run_cfg = config_io.build_config(None, layers, cfg.run, method.run)
    if "train.batch_size" not in method.run:
        per_example = 1 if chosen_only else files.samples_per_prompt if ranked else 2
        run_cfg.train.batch_size = max(1, round(2 * run_cfg.train.batch_size / per_example))
    return run_cfg, chosen_only


def check_methods(cfg: FrontierConfig) -> None:
    """Builds and validates every run's config before anything is sampled, so a typo fails in a second, not after
    minutes of sampling and training."""
    placeholder = PreferenceFiles(Path("pairs.jsonl"), Path("ranked.jsonl"), cfg.samples_per_prompt,
                                  PreferenceStats(0, 0, 0, 0, 0, math.nan, math.nan, math.nan))
    for method in cfg.methods:
        run_cfg, _ = method_config(cfg, method, placeholder)
        run_cfg.data.path = ""  # not written yet
        config_io.validate(run_cfg)  # the loss and its hyper-parameters too


def run_method(cfg: FrontierConfig, method: MethodSpec, files: PreferenceFiles, evaluator: Evaluator) -> RunResult:
    """One `train()` run from πref; the callback evaluates it every train.eval_every steps and after the last."""
    from dpokit.train.loop import train

    run_cfg, _ = method_config(cfg, method, files)
    run_dir = Path(run_cfg.train.output_dir)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # train() appends; a re-run starts a fresh log
    points: list[EvalPoint] = []
    last: list[Evaluation] = []

    def callback(step: int, policy: torch.nn.Module) -> dict[str, float]:
        result = evaluator(policy)
        last[:] = [result]
        points.append(EvalPoint(method.label, method.setting, method.slug, step, result.reward, result.reward_se,
                                result.kl, result.kl_se, result.mean_tokens))
        _say(f"  step {step}: reward {result.reward:+.3f} ± {result.reward_se:.3f}, KL {result.kl:.2f} ± "
             f"{result.kl_se:.2f}")
        return result.summary()

    summary = train(run_cfg, callback=callback)
    return RunResult(method, str(run_dir), points, last[0], summary.steps, summary.seconds)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _se(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _say(message: str) -> None:
    tqdm.write(message)
