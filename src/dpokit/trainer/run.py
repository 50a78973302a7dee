"""Everything a training run needs, built from the config in one place: data, policy, reference, optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError
from dpokit.core.progress import say
from dpokit.data.batching import Layout, batches
from dpokit.lm.logprobs import PolicyLogps
from dpokit.lm.reference import FrozenModel
from dpokit.losses import LossState, objective_from_config
from dpokit.models.compiling import compile_blocks
from dpokit.models.loading import default_device
from dpokit.trainer.assembly import Prepared, autocast_for, check_training_attention, load_all
from dpokit.trainer.config import Config
from dpokit.trainer.dist import Parallel
from dpokit.trainer.optim import build_optimizer, build_scheduler
from dpokit.trainer.step import Trainee, evaluate
from dpokit.trainer.sync import NoSync, ReferenceSync


@dataclass
class Run:
    cfg: Config
    out_dir: Path
    tokenizer: object
    data: Prepared
    layout: Layout
    trainee: Trainee  # policy + reference of the training data
    eval_trainee: Trainee  # the same policy; the reference of the eval data (differs only when cached)
    optimizer: torch.optim.Optimizer
    scheduler: object
    steps: int
    parallel: Parallel
    notes: list[str] = field(default_factory=list)
    sync: ReferenceSync | NoSync = field(default_factory=NoSync)  # TR-DPO's reference updates, after each step
    head: str = "causal-lm"  # the policy's head (models.HEADS): what a sharded LoRA policy is rebuilt with to save

    @property
    def policy(self) -> torch.nn.Module:
        return self.trainee.policy


def total_steps(cfg: Config, num_train: int, world: int = 1) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum * world
    return max(1, math.ceil(cfg.train.epochs * num_train / per_step))


def build_run(cfg: Config) -> Run:
    """Validates the config (before anything loads), then loads data and models and builds the optimizer."""
    config_io.validate(cfg, require=("model.name_or_path", "data.path", "train.output_dir"))
    objective, params = objective_from_config(cfg.loss)
    torch.manual_seed(cfg.train.seed)
    parallel = Parallel(fsdp=cfg.train.fsdp)
    if parallel.sharded and cfg.reference.sync.mode != "none":
        raise ConfigError("reference.sync (TR-DPO) mixes whole parameters of policy and reference, which FSDP / ZeRO-3 "
                          "shard: train it on one process or with DDP / ZeRO-1/2")
    refuse_compile(cfg.train.compile, parallel)
    check_training_attention(cfg.train.attention, parallel.device)
    out_dir = Path(cfg.train.output_dir)
    if parallel.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_io.save(cfg, out_dir / "config.yaml")
    device = parallel.device
    tell = say if parallel.is_main else _quiet

    # a precomputed reference is computed once by the main process, then loaded by the others
    loaded = load_all(cfg, objective, device, tell, parallel.main_process_first)
    tokenizer, data, policy, layout = loaded.tokenizer, loaded.data, loaded.policy, loaded.layout
    chunk = cfg.train.logps_chunk_size
    policy.train()
    if parallel.sharded and objective.needs_reference_distributions:
        loaded.train_ref.keep_head()  # the kl term runs πref's head inside the policy's forward: a whole copy
    engine, optimizer = parallel.wrap(PolicyLogps(policy, chunk), loaded.train_ref,
                                      lambda params: build_optimizer(params, cfg.train), cfg.train)
    if cfg.train.compile:
        compile_models(policy, loaded.train_ref, loaded.eval_ref)
    autocast = autocast_for(cfg.train.precision, device)
    steps = total_steps(cfg, len(data.train), parallel.world)

    loss_state = LossState()  # one for both trainees: evaluation reads what training keeps (BCO's δ)

    def trainee(reference) -> Trainee:
        return Trainee(policy=policy, reference=reference, objective=objective, params=params, autocast=autocast,
                       chunk_size=chunk, engine=engine, parallel=parallel, loss_state=loss_state)

    return Run(
        cfg=cfg, out_dir=out_dir, tokenizer=tokenizer, data=data, layout=layout,
        trainee=trainee(loaded.train_ref), eval_trainee=trainee(loaded.eval_ref),
        optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg.train, steps), steps=steps,
        parallel=parallel, notes=data.notes, sync=reference_sync(cfg, loaded.train_ref, policy),
    )


def refuse_compile(compile: bool, parallel: Parallel) -> None:
    """`train.compile` under DeepSpeed is refused before any load: its engine runs the model through its own hooks
    (ZeRO-3 gathers parameters in them) and has its own `compile` setting; dpokit has not tested blocks compiled
    beneath it."""
    if compile and parallel.zero is not None:
        raise ConfigError("train.compile=true is not supported under DeepSpeed (its engine wraps the model with its "
                          "own hooks and compile setting): use DDP or FSDP (train.fsdp=true), or train.compile=false")


def compile_models(policy: torch.nn.Module, *references) -> None:
    """Regional compilation (`models.compiling`) of the policy and of every frozen reference copy among
    `references` (an adapter-off reference is the policy itself; cached log-probs run no model)."""
    compile_blocks(policy)
    for reference in references:
        if isinstance(reference, FrozenModel) and reference.model is not policy:
            compile_blocks(reference.model)


def reference_sync(cfg: Config, reference, policy: torch.nn.Module) -> ReferenceSync | NoSync:
    """TR-DPO's updates of the frozen reference copy (`plan_reference` has refused every other reference)."""
    sync = cfg.reference.sync
    if sync.mode == "none":
        return NoSync()
    return ReferenceSync(reference.model, policy, sync.mode, sync.alpha, sync.every)


def _quiet(message: str) -> None:
    """Processes other than the main one keep quiet: one copy of every message."""


def evaluate_policy(cfg: Config, say: Callable[[str], None] = say) -> dict[str, float]:
    """Preference metrics (loss, reward accuracy and margins, log-probs) of `model.name_or_path` on `data.path`,
    against `reference.name_or_path` (or a copy of the policy's own weights), in dataset order, without training
    (`dpokit eval`, `dpokit.evaluate`)."""
    config_io.validate(cfg, require=("model.name_or_path", "data.path"))
    objective, params = objective_from_config(cfg.loss)
    loaded = load_all(cfg, objective, default_device(), say)
    trainee = Trainee(loaded.policy.eval(), loaded.train_ref, objective, params, chunk_size=cfg.train.logps_chunk_size)
    rows = batches(loaded.data.train, cfg.train.batch_size, loaded.tokenizer.pad_token_id, objective.unpaired,
                   layout=loaded.layout)
    return evaluate(trainee, rows)
