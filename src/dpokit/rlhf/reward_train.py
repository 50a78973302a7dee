"""`dpokit rm`: a Bradley–Terry reward model trained by dpokit's own loop on the preference data `dpokit train` reads.

    train_reward_model(cfg)
      build_reward_run(cfg)          this file: config checked, data (same pipeline), reward model, optimizer
      run_training(run, centring)    trainer/loop.py: steps, metrics.jsonl, eval, checkpoints, resume, signals
        train_step / evaluate        trainer/step.py, with the engine and objective below
        centring (after the last step): mean training reward -> config.json `dpokit_reward.offset`
      save_pretrained                (in the loop) sequence-classification model + tokenizer

The loop trains whatever its `Trainee` holds: an engine that maps a batch to one score per response, and an
objective of those scores. Here the engine is `RewardEngine` (r(x, y_k) for every response: reward_model.py's head on
the last token) and the objective is the registry's Plackett–Luce loss, reference-free at β = 1:

    L = −Σ_{k<K−1} log [exp r_k / Σ_{j≥k} exp r_j],   for a pair (K = 2): −log σ(r(x, yw) − r(x, yl))

so pairs train Bradley–Terry and ranked lists its Plackett–Luce generalisation, by one function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dpokit.core import settings as config_io
from dpokit.core.progress import say
from dpokit.data.batching import Layout, batches
from dpokit.data.collate import Batch
from dpokit.data.config import DataConfig
from dpokit.data.packing import PackedBatch
from dpokit.lm.logprobs import SequenceLogps
from dpokit.losses import LossOutput, Objective, objective_from_config
from dpokit.models.loading import tokenizer_of
from dpokit.rewards.reward_model import MARKER, check_head, response_lengths, reward_settings, rewards
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.trainer.assembly import (
    Prepared,
    autocast_for,
    build_policy,
    check_layout,
    check_training_attention,
    layout_of,
    prepare_data,
)
from dpokit.trainer.config import Config
from dpokit.trainer.dist import Parallel
from dpokit.trainer.loop import Callback, RunSummary, run_training
from dpokit.trainer.metrics import PreferenceMetrics
from dpokit.trainer.optim import build_optimizer, build_scheduler
from dpokit.trainer.run import Run, compile_models, refuse_compile, total_steps
from dpokit.trainer.step import Trainee


class RewardEngine(torch.nn.Module):
    """The reward model as the loop's engine: `forward(batch)` scores every response.

    The loop hands an engine's `SequenceLogps.logps` to the objective as the per-response scores (a policy's
    log-probs in DPO); here they are the rewards r(x, y_k), (B, K). No per-token values exist: those fields are
    (B, K, 0). Like `PolicyLogps`, the whole computation runs inside this module's forward, where DDP hooks in.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch | PackedBatch) -> SequenceLogps:
        scores = rewards(self.model, batch)
        no_tokens = scores.new_zeros(*scores.shape, 0)
        return SequenceLogps(logps=scores, num_tokens=response_lengths(batch).to(scores.device),
                             token_logps=no_tokens, token_mask=no_tokens.bool())


class RewardMetrics(PreferenceMetrics):
    """Loss; accuracy (best response scored above the worst) and margin (mean r_best − r_worst); the best and worst
    responses' mean rewards; mean and std of every response's reward. Sums over examples (and over processes), like
    DPO's metrics. Rewards here are the head's raw outputs: centring comes after training, and moves neither the
    accuracy nor the margin."""

    keys = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "rewards/mean",
            "rewards/mean_square")

    def add(self, out: LossOutput, logps: SequenceLogps, labels: torch.Tensor | None = None) -> None:
        r = out.rewards.detach().float()
        self._add("loss", out.losses.detach().float())
        self._add("rewards/chosen", r[:, 0])
        self._add("rewards/rejected", r[:, -1])
        self._add("rewards/accuracies", (r[:, 0] > r[:, -1]).float())
        self._add("rewards/margins", r[:, 0] - r[:, -1])
        self._add("rewards/mean", r.flatten())
        self._add("rewards/mean_square", r.flatten() ** 2)

    def means(self) -> dict[str, float]:
        out = super().means()
        if "rewards/mean_square" in out:
            out["rewards/std"] = math.sqrt(max(0.0, out.pop("rewards/mean_square") - out["rewards/mean"] ** 2))
        return out


def train_reward_model(cfg: RewardModelConfig) -> RunSummary:
    """Trains, centres and saves a reward model as configured (README, `dpokit rm`)."""
    start = time.perf_counter()
    run = build_reward_run(cfg)
    return run_training(run, centring(run, cfg.data), start)


def build_reward_run(cfg: RewardModelConfig) -> Run:
    """Validates the config (before anything loads), then loads data and the reward model and builds the optimizer."""
    config_io.validate(cfg, require=("model.name_or_path", "data.path", "train.output_dir"))
    train_cfg = cfg.as_train_config()
    objective, params = objective_from_config(train_cfg.loss)
    torch.manual_seed(cfg.train.seed)  # the new head's initial weights
    parallel = Parallel(fsdp=cfg.train.fsdp)
    refuse_compile(cfg.train.compile, parallel)
    out_dir = Path(cfg.train.output_dir)
    if parallel.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_io.save(cfg, out_dir / "config.yaml")
    check_training_attention(cfg.train.attention, parallel.device)
    tell = say if parallel.is_main else _quiet
    tokenizer, data, model, layout = _load(train_cfg, objective, parallel.device, tell)
    model.train()
    engine, optimizer = parallel.wrap(RewardEngine(model), None, lambda ps: build_optimizer(ps, cfg.train), cfg.train)
    if cfg.train.compile:
        compile_models(model)
    steps = total_steps(train_cfg, len(data.train), parallel.world)
    trainee = Trainee(policy=model, reference=None, objective=objective, params=params, engine=engine,
                      autocast=autocast_for(cfg.train.precision, parallel.device), parallel=parallel,
                      metrics=RewardMetrics)
    return Run(cfg=train_cfg, out_dir=out_dir, tokenizer=tokenizer, data=data, layout=layout, trainee=trainee,
               eval_trainee=trainee, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.train, steps),
               steps=steps, parallel=parallel, notes=data.notes, head="reward")


def _load(cfg: Config, objective: Objective, device: torch.device,
          tell: Callable[[str], None]) -> tuple[Any, Prepared, torch.nn.Module, Layout]:
    """Tokenizer, data (`dpokit train`'s pipeline), the reward model, and the batch layout it supports."""
    tokenizer = tokenizer_of(cfg.model)
    data = prepare_data(cfg, tokenizer, objective)
    for note in data.notes:
        tell(note)
    model = build_policy(cfg.model, device, head="reward", attention=cfg.train.attention)
    check_head(model)
    model.config.pad_token_id = tokenizer.pad_token_id  # transformers finds each row's last token through it
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        tell("warning: the pad token is eos: transformers' own forward of the saved model reads the token before a "
             "final eos (it skips pad tokens); dpokit's scorer reads the eos, as training does")
    layout, warning = check_layout(model, data.train, layout_of(cfg), tokenizer.pad_token_id, False, 0,
                                   outputs=rewards)
    if warning:
        tell(f"warning: {warning}")
    return tokenizer, data, model, layout


def centring(run: Run, data: DataConfig) -> Callback:
    """The loop's callback that centres the rewards after the last step.

    It measures the mean reward over every training response and stores it, with the tokenization settings, in the
    model's config (`MARKER`), which `save_pretrained` then writes to config.json; dpokit's scorer subtracts it.
    metrics.jsonl gets it as `{"split": "callback", "reward_offset": ...}`. It is collective: every process scores
    every batch through the wrapped engine (sharded weights are gathered layer by layer, as in training).
    """

    @torch.no_grad()
    def centre(step: int, model: torch.nn.Module) -> dict[str, Any] | None:
        if step != run.steps:
            return None
        size = run.cfg.train.eval_batch_size or run.cfg.train.batch_size
        total, count = 0.0, 0
        with run.trainee.autocast():
            for batch in batches(run.data.train, size, run.tokenizer.pad_token_id, False, layout=run.layout):
                scores = run.trainee.engine(batch.to(run.parallel.device)).logps
                total, count = total + scores.sum().item(), count + scores.numel()
        offset = total / count
        setattr(model.config, MARKER, reward_settings(offset, data))
        run.notes.append(f"rewards centred: the mean over {count:,} training responses, {offset:.4g}, is subtracted "
                         f"by dpokit's scorer (config.json: {MARKER}.offset)")
        return {"reward_offset": offset}

    centre.collective = True
    return centre


def _quiet(message: str) -> None:
    """Processes other than the main one keep quiet."""
