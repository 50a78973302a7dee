"""The training run: build everything from the config, loop over optimizer steps, evaluate, save."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dpokit import config as config_io
from dpokit.config import Config
from dpokit.losses import LossParams, Objective, parse_objective, validate_params
from dpokit.models import load_tokenizer
from dpokit.pipeline import Layout, autocast_for, batches, build_policy, build_reference, check_layout, prepare_data
from dpokit.train.metrics import JsonlWriter
from dpokit.train.optim import build_optimizer, build_scheduler
from dpokit.train.order import batch_indices
from dpokit.train.step import Trainee, evaluate, train_step


@dataclass
class RunSummary:
    output_dir: str
    steps: int
    train_pairs: int
    eval_pairs: int
    final_train: dict[str, float]
    final_eval: dict[str, float] | None
    seconds: float
    notes: list[str]


def objective_from(cfg: Config) -> tuple[Objective, LossParams]:
    """The loss and its hyper-parameters, validated (no model is loaded before this passes)."""
    objective = parse_objective(cfg.loss.name, reference_free=cfg.loss.reference_free)
    params = LossParams(
        beta=cfg.loss.beta, label_smoothing=cfg.loss.label_smoothing, simpo_gamma=cfg.loss.simpo_gamma,
        orpo_lambda=cfg.loss.orpo_lambda, unlikelihood_alpha=cfg.loss.unlikelihood_alpha,
        kto_desirable_weight=cfg.loss.kto_desirable_weight, kto_undesirable_weight=cfg.loss.kto_undesirable_weight,
    )
    validate_params(objective, params)
    return objective, params


def total_steps(cfg: Config, num_train: int) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    return max(1, math.ceil(cfg.train.epochs * num_train / per_step))


Callback = Callable[[int, torch.nn.Module], "dict[str, Any] | None"]


def train(cfg: Config, chosen_only: bool = False, callback: Callback | None = None) -> RunSummary:
    """Runs a whole training job as configured; see README for the files it writes.

    Args:
        cfg: the run's configuration (validated here before anything loads).
        chosen_only: keep only each example's best response (Preferred-FT does not need the others).
        callback: called as `callback(step, policy)` with the policy in eval mode and gradients off, at every
            `train.eval_every` steps and after the last one, e.g. to sample and score completions. A dict it returns
            is written to metrics.jsonl with `"split": "callback"`.
    """
    start = time.perf_counter()
    config_io.validate(cfg, require=("model.name_or_path", "data.path", "train.output_dir"))
    objective, params = objective_from(cfg)
    torch.manual_seed(cfg.train.seed)
    out_dir = Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(cfg, out_dir / "config.yaml")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.name_or_path, cfg.model.trust_remote_code)
    data = prepare_data(cfg, tokenizer, objective, chosen_only)
    for note in data.notes:
        _say(cfg, note)
    policy = build_policy(cfg, device)
    pad, unpaired = tokenizer.pad_token_id, objective.unpaired
    layout, warning = check_layout(policy, data.train, Layout.from_config(cfg), pad, unpaired,
                                   cfg.train.logps_chunk_size)
    if warning:
        _say(cfg, f"warning: {warning}")
    train_ref, eval_ref = build_reference(cfg, policy, objective, data, pad, device, layout)
    policy.train()
    autocast = autocast_for(cfg.train.precision, device)
    chunk = cfg.train.logps_chunk_size
    trainee = Trainee(policy, train_ref, objective, params, autocast, chunk)
    eval_trainee = Trainee(policy, eval_ref, objective, params, autocast, chunk)

    steps = total_steps(cfg, len(data.train))
    optimizer = build_optimizer(policy.parameters(), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, steps)
    lengths = [ex.num_tokens for ex in data.train]
    order = batch_indices(lengths, cfg.train.batch_size, cfg.train.seed, cfg.train.shuffle, cfg.train.length_bucketing)
    writer = JsonlWriter(out_dir / "metrics.jsonl")

    def run_eval(step: int) -> dict[str, float] | None:
        if callback is not None:
            _run_callback(callback, step, policy, writer)
        if not data.eval:
            return None
        size = cfg.train.eval_batch_size or cfg.train.batch_size
        result = evaluate(eval_trainee, batches(data.eval, size, pad, unpaired, layout=layout))
        writer.write({"step": step, "split": "eval", **result})
        return result

    last: dict[str, float] = {}
    bar = tqdm(range(steps), desc="train", disable=not cfg.train.progress, dynamic_ncols=True)
    for step in bar:
        micro = [layout([data.train[i] for i in next(order)], pad, unpaired) for _ in range(cfg.train.grad_accum)]
        last = train_step(trainee, micro, optimizer, scheduler, cfg.train.max_grad_norm)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
            writer.write({"step": step + 1, "split": "train", **last})
        bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last.get('rewards/accuracies', float('nan')):.2f}")
        if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < steps:
            run_eval(step + 1)
    final_eval = run_eval(steps)
    writer.close()

    if cfg.train.save:
        save_model(policy, tokenizer, out_dir)
    summary = RunSummary(str(out_dir), steps, len(data.train), len(data.eval), last, final_eval,
                         time.perf_counter() - start, data.notes)
    (out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary


def _run_callback(callback: Callback, step: int, policy: torch.nn.Module, writer: JsonlWriter) -> None:
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            result = callback(step, policy)
    finally:
        policy.train(was_training)
    if result:
        writer.write({"step": step, "split": "callback", **result})


def save_model(policy: torch.nn.Module, tokenizer, out_dir: Path) -> None:
    """safetensors weights + tokenizer. A LoRA policy is saved merged (loadable anywhere) plus its adapter."""
    if hasattr(policy, "merge_and_unload"):
        policy.save_pretrained(out_dir / "adapter")
        policy = policy.merge_and_unload()
    policy.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _say(cfg: Config, message: str) -> None:
    tqdm.write(message, file=sys.stderr)
