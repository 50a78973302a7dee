"""The DPO paper's controlled experiment (§6.1, Fig. 2 left) on any model, prompts and reward: who buys the most
reward for the least KL from the reference?

Call tree of `run_frontier`:

    run_frontier
    ├── build_preferences      πref samples K completions per training prompt, scored -> pairs.jsonl, ranked.jsonl
    ├── Evaluator(πref)        step 0: πref on held-out prompts (its KL to itself is 0)
    ├── train_learned_reward   only if a method has `reward: learned`: one reward model on the pairs (frontier_rlhf)
    └── RUNNERS[method.kind].run, per method:
        loss  run_loss_method  dpokit's own `train()` from πref, a callback every `train.eval_every` steps
        ppo   run_ppo_method   `train_ppo` from πref, a callback every `ppo_eval_every` iterations (frontier_rlhf)
        bon   run_bon_method   best of N πref samples on the held-out prompts by the reward (frontier_rlhf)
        └── Evaluator(policy)  sample held-out completions -> mean reward, mean sequence KL(π‖πref)

Every evaluation samples the same held-out prompts with the same seed, so points differ by the model, not the draw.
Best-of-N is scored on its own draw with the same ground-truth reward, at its analytic KL (rlhf/bon.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from dpokit.core import settings as config_io
from dpokit.core.errors import DataError
from dpokit.core.progress import report
from dpokit.core.sections import SamplingSettings
from dpokit.experiments import frontier_online as online
from dpokit.experiments import frontier_rlhf as rlhf
from dpokit.experiments.frontier_config import FrontierConfig, MethodSpec
from dpokit.experiments.frontier_eval import (  # noqa: F401  (EvalPoint, Evaluation, FrontierResult, RunResult: re-exported)
    EVAL_SEED_OFFSET,
    EvalPoint,
    Evaluation,
    Evaluator,
    FrontierResult,
    MethodContext,
    Recorder,
    RunResult,
)
from dpokit.losses import parse_objective
from dpokit.models.sampling import load_for_sampling
from dpokit.rewards.preferences import PreferenceFiles, PreferenceStats, build_preferences
from dpokit.rewards.sources import Reward
from dpokit.trainer.config import Config, build_config
from dpokit.trainer.loop import train

PREFERENCE_SEED_OFFSET = 1  # preference samples are drawn with seed + 1 (held-out evaluations: EVAL_SEED_OFFSET)


def run_frontier(cfg: FrontierConfig, reward: Reward) -> FrontierResult:
    """Preference data from πref's samples, then every method's run from πref, evaluated as it trains."""
    start = time.perf_counter()
    cfg.check()
    out = Path(cfg.output_dir)
    check_methods(cfg)
    loaded = load_for_sampling(cfg.model, cfg.chat)
    tokenizer, chat = loaded.tokenizer, loaded.chat
    reference = loaded.model.eval().requires_grad_(False)
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size)

    report(f"preference data: {cfg.samples_per_prompt} samples for each of {len(cfg.train_prompts)} prompts")
    files = build_preferences(reference, tokenizer, cfg.train_prompts, reward, cfg.samples_per_prompt, settings,
                              out / "data", seed=cfg.seed + PREFERENCE_SEED_OFFSET, progress=cfg.progress, chat=chat)
    if files.stats.pairs == 0:
        raise DataError("every sampled pair tied or was dropped; no preferences to learn from (try more prompts or "
                        "a reward that separates completions)", source=str(files.pairs_path))
    evaluator = Evaluator(reference, tokenizer, cfg.eval_prompts, reward, settings, cfg.eval_samples_per_prompt,
                          seed=cfg.seed + EVAL_SEED_OFFSET, chat=chat)
    at_start = evaluator(reference)
    report(f"πref on {len(at_start.rewards)} held-out samples: reward {at_start.reward:.3f}, KL {at_start.kl:.3f}")
    context = MethodContext(cfg, files, evaluator, {"ground_truth": reward})
    learned = None
    if any(method.reward == "learned" for method in cfg.methods):
        learned = rlhf.train_learned_reward(cfg, files)
        context.rewards["learned"] = rlhf.load_learned_reward(learned)
    runs = []
    for i, method in enumerate(cfg.methods, start=1):
        report(f"[{i}/{len(cfg.methods)}] {method.label} {method.setting}".rstrip())
        runs.append(RUNNERS[method.kind].run(context, method))
    return FrontierResult(at_start, runs, files.stats, reward.name, cfg, time.perf_counter() - start, learned)


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
    run_cfg = build_config(None, layers, cfg.run, method.run)
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
        RUNNERS[method.kind].check(cfg, method, placeholder)


def check_loss_method(cfg: FrontierConfig, method: MethodSpec, placeholder: PreferenceFiles) -> None:
    """The run's `dpokit train` config, validated (the loss and its hyper-parameters too)."""
    run_cfg, _ = method_config(cfg, method, placeholder)
    run_cfg.data.path = ""  # not written yet
    config_io.validate(run_cfg)


def run_loss_method(context: MethodContext, method: MethodSpec) -> RunResult:
    """One `train()` run from πref; the callback evaluates it every train.eval_every steps and after the last."""

    run_cfg, _ = method_config(context.cfg, method, context.files)
    run_dir = Path(run_cfg.train.output_dir)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # train() appends; a re-run starts a fresh log
    record = Recorder(context.evaluator, method)
    summary = train(run_cfg, callback=record)
    calls = context.files.stats.prompts * context.files.samples_per_prompt  # the preference data's reward calls
    return RunResult(method, str(run_dir), record.points, record.last, summary.steps, summary.seconds, calls)


class Runner(NamedTuple):
    """How one kind of method is checked (before anything is sampled) and run."""

    check: Callable[[FrontierConfig, MethodSpec, PreferenceFiles], None]
    run: Callable[[MethodContext, MethodSpec], RunResult]


RUNNERS = {  # one per frontier_config.KINDS entry
    "loss": Runner(check_loss_method, run_loss_method),
    "ppo": Runner(rlhf.check_ppo_method, rlhf.run_ppo_method),
    "bon": Runner(rlhf.check_bon_method, rlhf.run_bon_method),
    "online": Runner(online.check_online_method, online.run_online_method),
}
