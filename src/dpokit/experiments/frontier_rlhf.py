"""The frontier's RL arms (the DPO paper's PPO, PPO-GT and Best-of-N baselines), run by `frontier.RUNNERS`.

    train_learned_reward    once per frontier run, if a method has `reward: learned`: a Bradley–Terry reward model
                            from πref (`dpokit rm`) on the pairs of all but `rm_eval_fraction` of the training
                            prompts; its accuracy on the held-out prompts' pairs goes to the report
    run_ppo_method          `train_ppo` from πref on the training prompts with the learned or the ground-truth
                            reward; the callback evaluates the policy with the frontier's `Evaluator` every
                            `ppo_eval_every` iterations and after the last, like the loss methods
    run_bon_method          max(N) samples of πref per held-out prompt, drawn once (seed + 3) and shared by every N:
                            the best of the first N by the method's reward, valued by the ground-truth reward, at
                            x = log N − (N−1)/N (rlhf/bon.py); Best-of-N trains nothing, so it has no curve
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from dpokit.core import settings as config_io
from dpokit.core.progress import report
from dpokit.experiments.frontier_config import KINDS, FrontierConfig, MethodSpec, refuse_frontier_keys
from dpokit.experiments.frontier_eval import (
    EVAL_SEED_OFFSET,
    Evaluation,
    MethodContext,
    Recorder,
    RewardModelInfo,
    RunResult,
    mean_of,
    point,
    standard_error,
)
from dpokit.lm.sampling import Samples
from dpokit.rewards.preferences import PreferenceFiles
from dpokit.rewards.sources import Reward, load_reward
from dpokit.rlhf.bon import analytic_kl, best_of_n, chosen_indices
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.rlhf.ppo_trainer import train_ppo
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.rlhf.reward_train import train_reward_model

BON_SEED_OFFSET = EVAL_SEED_OFFSET + 1  # Best-of-N's draw on the held-out prompts: seed + 3
RM_DEFAULTS = {  # the learned reward model's settings unless the frontier's `rm` sets them
    "train.optimizer": "adamw", "train.lr": 1e-4, "train.max_steps": 200, "train.batch_size": 16,
    "train.warmup_steps": 10, "train.log_every": 10,
}
FROM_FRONTIER = ("model", "prompts", "reward", "output_dir", "seed", "max_new_tokens", "chat")  # not in `ppo:`


def train_learned_reward(cfg: FrontierConfig, files: PreferenceFiles) -> RewardModelInfo:
    """Trains the one reward model of `reward: learned` methods (module docstring) into output_dir/reward_model."""

    data = Path(cfg.output_dir) / "data"
    split = split_pairs(files.pairs_path, data / "rm_train.jsonl", data / "rm_eval.jsonl", cfg.rm_eval_fraction,
                        cfg.seed)
    rm_cfg = reward_model_config(cfg, data / "rm_train.jsonl", data / "rm_eval.jsonl")
    report(f"reward model: {split['train_pairs']} pairs; {split['eval_pairs']} pairs of {split['eval_prompts']} "
        "held-out training prompts")
    summary = train_reward_model(rm_cfg)
    accuracy = (summary.final_eval or {}).get("rewards/accuracies", float("nan"))
    report(f"reward model: held-out accuracy {accuracy:.3f} after {summary.steps} steps ({summary.seconds:.0f} s)")
    return RewardModelInfo(rm_cfg.train.output_dir, split["train_pairs"], split["eval_pairs"], split["eval_prompts"],
                           accuracy, summary.steps, summary.seconds)


def reward_model_config(cfg: FrontierConfig, train_path: Path, eval_path: Path):
    """`dpokit rm` settings: `RM_DEFAULTS`, the shared run's data lengths, then the frontier's `rm` section."""

    shared = {k: v for k, v in cfg.run.items() if k in ("data.max_length", "data.max_prompt_length")}
    layers = {"model.name_or_path": cfg.model, "data.path": str(train_path), "data.eval_path": str(eval_path),
              "data.format": "explicit", "train.output_dir": str(Path(cfg.output_dir) / "reward_model"),
              "train.seed": cfg.seed, "train.progress": cfg.progress}
    return config_io.load(RewardModelConfig(), None, RM_DEFAULTS, shared, layers, cfg.rm)


def split_pairs(pairs: Path, train_path: Path, eval_path: Path, eval_fraction: float, seed: int) -> dict[str, int]:
    """Splits the pairs by prompt (a seeded shuffle of the distinct prompts), so no held-out pair shares a prompt or
    a completion with a training pair. Returns the counts."""
    records = [json.loads(line) for line in pairs.read_text().splitlines()]
    prompts = list(dict.fromkeys(json.dumps(r["prompt"]) for r in records))
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:max(1, round(len(prompts) * eval_fraction))]) if len(prompts) > 1 else set()
    train = [r for r in records if json.dumps(r["prompt"]) not in held]
    held_out = [r for r in records if json.dumps(r["prompt"]) in held]
    for path, rows in ((train_path, train), (eval_path, held_out)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train_pairs": len(train), "eval_pairs": len(held_out), "eval_prompts": len(held)}


def load_learned_reward(info: RewardModelInfo) -> Reward:
    """The trained reward model as a `Reward` (dpokit's tokenization, centred)."""
    reward = load_reward(info.path)
    return Reward("learned reward model", reward.fn)


def ppo_config(cfg: FrontierConfig, method: MethodSpec, prompts_path: str, chat: bool | None):
    """`dpokit ppo` settings of one method: the frontier's model, prompts, seed and budget, then the shared `ppo`
    section, the method's `run`, and its `beta` (the KL coefficient)."""

    refuse_frontier_keys({"ppo": cfg.ppo, f"{method.label} run": method.run}, FROM_FRONTIER)
    layers = {"model.name_or_path": cfg.model, "prompts": prompts_path,
              "output_dir": str(Path(cfg.output_dir) / "runs" / method.slug), "seed": cfg.seed,
              "max_new_tokens": cfg.max_new_tokens, "chat": chat, "progress": cfg.progress}
    beta = {"beta": method.beta} if method.beta is not None else {}
    return config_io.load(PPOConfig(), None, layers, cfg.ppo, method.run, beta)


def check_ppo_method(cfg: FrontierConfig, method: MethodSpec, files: PreferenceFiles) -> None:
    """The method's PPO settings, validated before anything is sampled (the prompts file is written later)."""
    config_io.validate(ppo_config(cfg, method, "", cfg.chat))


def run_ppo_method(context: MethodContext, method: MethodSpec) -> RunResult:
    """PPO from πref on the training prompts, evaluated every `ppo_eval_every` iterations and after the last."""

    cfg = context.cfg
    prompts = Path(cfg.output_dir) / "data" / "train_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in cfg.train_prompts))
    ppo_cfg = ppo_config(cfg, method, str(prompts), context.evaluator.chat)
    record = Recorder(context.evaluator, method, "iteration")

    def callback(iteration: int, policy) -> dict[str, float] | None:
        if iteration % cfg.ppo_eval_every and iteration != ppo_cfg.iterations:
            return None
        return record(iteration, policy)

    summary = train_ppo(ppo_cfg, callback, context.rewards[method.reward])
    return RunResult(method, ppo_cfg.output_dir, record.points, record.last, summary.iterations, summary.seconds)


def check_bon_method(cfg: FrontierConfig, method: MethodSpec, files: PreferenceFiles) -> None:
    """Nothing beyond `MethodSpec.check` (n >= 1, a reward): Best-of-N has no training settings."""


def run_bon_method(context: MethodContext, method: MethodSpec) -> RunResult:
    """Best-of-`method.n` by the method's reward on the shared draw, valued by the ground-truth reward."""

    start = time.perf_counter()
    draw, truth = bon_draw(context, method.reward)
    rows = [i * draw.n + j for i, j in enumerate(chosen_indices(draw.rewards, method.n))]
    s = draw.samples
    chosen = Samples([s.prompts[r] for r in rows], [s.completions[r] for r in rows], [s.prompt_ids[r] for r in rows],
                     [s.completion_ids[r] for r in rows], s.stop_ids)
    rewards, kl = [truth[r] for r in rows], analytic_kl(method.n)
    lengths = [len(ids) for ids in chosen.completion_ids]
    result = Evaluation(mean_of(rewards), standard_error(rewards), kl, 0.0, mean_of(lengths), chosen, rewards,
                        [kl] * len(rows))
    report(f"  best of {method.n}: reward {result.reward:+.3f} ± {result.reward_se:.3f} at KL {kl:.2f} (analytic)")
    path = Path(context.cfg.output_dir) / "data" / f"bon_{method.reward}.jsonl"
    return RunResult(method, str(path), [point(method, 0, result)], result, 0, time.perf_counter() - start)


def bon_draw(context: MethodContext, reward: str):
    """The Best-of-N draw of one selection reward (made once, cached in the context): max(N) samples of πref per
    held-out prompt and evaluation slot, scored by that reward, and the ground-truth reward of every sample.

    Returns:
        (`rlhf.bon.BestOfN` with the selection reward's scores, flat ground-truth rewards in the draw's order).
    """

    if reward not in context.bon_draws:
        ev, cfg = context.evaluator, context.cfg
        n = max(m.n for m in cfg.methods if KINDS[m.kind].n and m.reward == reward)
        prompts = [p for p in ev.prompts for _ in range(ev.num_samples)]  # rows line up with the evaluator's
        report(f"  Best-of-N draw: {n} samples of πref for each of {len(prompts)} held-out prompts, by the {reward} "
            "reward")
        draw = best_of_n(ev.reference, ev.tokenizer, prompts, context.rewards[reward], n, ev.settings,
                         seed=cfg.seed + BON_SEED_OFFSET, chat=ev.chat, progress=cfg.progress)
        truth = context.rewards["ground_truth"](draw.samples.prompts, draw.samples.completions)
        draw.write_jsonl(Path(cfg.output_dir) / "data" / f"bon_{reward}.jsonl")
        context.bon_draws[reward] = (draw, truth)
    return context.bon_draws[reward]
