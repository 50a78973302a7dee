"""The training loop: optimizer steps, logging, evaluation, checkpoints, exact resume, clean stops.

    train(cfg)
      build_run(cfg)                    run.py: config checked, data, policy, reference, optimizer
      resume (train.resume)             checkpoint.py: weights, optimizer, RNG, data position, metrics
      for each optimizer step:
        train_step(...)                 step.py: micro-batches -> backward -> clip -> step (NaN/inf checked)
        metrics.jsonl (and trackers.py: train.report_to), eval, callback, checkpoint every train.save_every
        SIGTERM/SIGINT -> checkpoint, exit with how to resume
      final eval, save_pretrained, summary.json, README.md (model_card.py)
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import torch

from dpokit.core.errors import ConfigError, DpokitError
from dpokit.core.progress import progress
from dpokit.core.sections import Tracking
from dpokit.core.settings import to_dict
from dpokit.data.batching import batches
from dpokit.data.store import token_counts
from dpokit.trainer.assembly import build_policy
from dpokit.trainer.config import Config
from dpokit.trainer.model_card import write_model_cards
from dpokit.trainer.optim import NonFiniteError
from dpokit.trainer.order import batch_indices
from dpokit.trainer.run import Run, build_run, total_steps
from dpokit.trainer.runtime import Interrupted, StopSignals, checkpoint, resume, save_model
from dpokit.trainer.step import evaluate, train_step
from dpokit.trainer.summary import RunSummary
from dpokit.trainer.trackers import TrackedWriter, metrics_writer

__all__ = ["RunSummary", "run_training", "total_steps", "train"]

Callback = Callable[[int, torch.nn.Module], "dict[str, Any] | None"]


def train(cfg: Config, callback: Callback | None = None, keep_group: bool = False) -> RunSummary:
    """Runs a whole training job as configured; see README for the files it writes.

    Args:
        cfg: the run's configuration (validated before anything loads).
        callback: called as `callback(step, policy)` with the policy in eval mode and gradients off, at every
            `train.eval_every` steps and after the last one, e.g. to sample and score completions. A dict it returns
            is written to metrics.jsonl with `"split": "callback"`. It runs on the main process only, unless it
            has `collective = True` (then on every process, which it must keep in step: the same forwards).
        keep_group: leave the process group up at the end (a caller that trains again in it, as `dpokit online`
            does round after round, tears it down itself); by default the job ends it.
    """
    start = time.perf_counter()
    run = build_run(cfg)
    summary = run_training(run, callback, start, keep_group)
    if cfg.train.save and run.parallel.is_main:
        write_model_cards(cfg, summary, run.out_dir)  # README.md: base, data, loss, β, steps, final metrics
    return summary


def run_training(run: Run, callback: Callback | None = None, start: float | None = None,
                 keep_group: bool = False) -> RunSummary:
    """Trains a built run to its end (see `train`); `dpokit rm` builds its own (a reward model, no reference).

    Args:
        run: what `setup.build_run` returns, or a run built the same way around another engine and objective.
        callback: as in `train`.
        start: when the job started (`time.perf_counter()`), for the summary's seconds; default: now.
        keep_group: as in `train`.
    """
    start = time.perf_counter() if start is None else start
    try:
        return _train(run, callback, start)
    finally:
        run.trainee.engine = run.eval_trainee.engine = None  # the DDP wrapper goes before its process group
        if not keep_group:
            run.parallel.close()


def _train(run: Run, callback: Callback | None, start: float) -> RunSummary:
    cfg = run.cfg
    main = run.parallel.is_main
    if callback is not None and run.parallel.sharded and not _collective(callback):
        raise ConfigError("a training callback runs on the main process alone, which with FSDP / ZeRO-3 holds only "
                          "part of the policy and cannot run forwards the other processes do not join: mark it "
                          "collective (callback.collective = True: every process runs it, in step) or evaluate the "
                          "saved model")
    first_step = resume(run.out_dir, run.cfg.train.resume, run.policy, run.optimizer, run.scheduler,
                        run.parallel, f"step {{}}/{run.steps}", run.trainee.loss_state)
    writer = metrics_writer(run.out_dir, Tracking.of(cfg.train), to_dict(cfg), first_step, main)
    with closing(writer):  # metrics.jsonl and the trackers (train.report_to), closed also when a run stops early
        last = _steps(run, first_step, writer, callback)
        final_eval = _evaluate(run, run.steps, writer, callback)
    digests = _check_replicas(run)
    held = run.parallel.holdings(run.policy, run.optimizer)
    if cfg.train.save:
        _save(run)
    summary = RunSummary(
        output_dir=str(run.out_dir), steps=run.steps, train_pairs=len(run.data.train), eval_pairs=len(run.data.eval),
        final_train=last, final_eval=final_eval, seconds=time.perf_counter() - start, notes=run.notes,
        processes=run.parallel.world, replica_digests=digests, sharded=run.parallel.sharded, held_per_process=held,
    )
    if main:
        (run.out_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary


def _steps(run: Run, first_step: int, writer: TrackedWriter, callback: Callback | None) -> dict[str, float]:
    """The optimizer steps after `first_step`, with their metrics, evaluations, callbacks and checkpoints; a signal
    stops them after a checkpoint (`Interrupted`). Returns the last step's training metrics."""
    cfg, main = run.cfg, run.parallel.is_main
    order = _order(run, first_step)
    last: dict[str, float] = {}
    bar = progress(range(first_step, run.steps), run.steps, every=cfg.train.log_every,
                   enabled=cfg.train.progress and main)
    with StopSignals(announce=main) as stop:
        for step in bar:
            last = _step(run, order, step + 1)
            run.sync.after_step(step + 1)  # TR-DPO (reference.sync); nothing otherwise
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == run.steps:
                writer.write({"step": step + 1, "split": "train", **last})
            bar.set_postfix(**_postfix(last))
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < run.steps:
                _evaluate(run, step + 1, writer, callback)
            stopping = run.parallel.any(stop.signum is not None)  # every process stops after the same step
            if stopping or (cfg.train.save_every and (step + 1) % cfg.train.save_every == 0):
                path = checkpoint(run.out_dir, run.policy, run.optimizer, run.scheduler, step + 1, writer,
                                  cfg.train.keep_checkpoints, run.parallel, run.trainee.loss_state)
                if stopping:
                    signum = stop.signum or signal.SIGTERM
                    raise Interrupted(f"stopped by signal {signum} after step {step + 1}/{run.steps}; "
                                      f"checkpoint: {path}; continue with the same command plus --resume", signum)
    return last


def _postfix(metrics: dict[str, float]) -> dict[str, str]:
    """What the bar or progress line shows: the loss, and the reward accuracy where the loss has one (not sft)."""
    shown = {"loss": f"{metrics['loss']:.4f}"}
    if "rewards/accuracies" in metrics:
        shown["acc"] = f"{metrics['rewards/accuracies']:.2f}"
    return shown


def _save(run: Run) -> None:
    """The final model, from the main process. Sharded weights are gathered first (all processes take part); a
    sharded LoRA policy is rebuilt whole in the main process from them, so it can be merged and saved as usual."""
    base = run.cfg.model.name_or_path  # as the user named it: the adapter's base
    if not run.parallel.sharded:
        if run.parallel.is_main:
            save_model(run.policy, run.tokenizer, run.out_dir, base=base)
        return
    state = run.parallel.full_state(run.policy)
    if run.parallel.is_main:
        if run.cfg.model.lora.enabled:
            whole = build_policy(run.cfg.model, torch.device("cpu"), run.head)
            whole.load_state_dict(state, strict=True)
            for key, value in vars(run.policy.config).items():  # what the run noted there (dpokit rm's offset)
                setattr(whole.config, key, value)
            save_model(whole, run.tokenizer, run.out_dir, base=base)
        else:
            save_model(run.policy, run.tokenizer, run.out_dir, state)
    run.parallel.barrier()


def _check_replicas(run: Run) -> list[str]:
    """Every process must end with identical weights; if not, gradients were not really all-reduced."""
    digests = run.parallel.replica_digests(run.policy)
    if len(set(digests)) > 1:
        raise DpokitError(f"the {len(digests)} processes ended with different weights ({digests}): gradients were "
                          "not synchronised; please report this with your launch command and accelerate config")
    return digests


def _step(run: Run, order: Iterator[list[int]], step: int) -> dict[str, float]:
    """One optimizer step; a non-finite loss or gradient stops the run naming the step and its pairs."""
    pad, unpaired = run.tokenizer.pad_token_id, run.trainee.objective.unpaired
    accum, rank = run.cfg.train.grad_accum, run.parallel.rank
    groups = [next(order) for _ in range(accum * run.parallel.world)][rank * accum:(rank + 1) * accum]
    micro = [run.layout([run.data.train[i] for i in g], pad, unpaired) for g in groups]
    try:
        return train_step(run.trainee, micro, run.optimizer, run.scheduler, run.cfg.train.max_grad_norm)
    except NonFiniteError as err:
        pairs = [run.data.train[i].where for g in groups for i in g]
        path = run.out_dir / f"nonfinite-step-{step}.json"
        path.write_text(json.dumps({"step": step, "what": str(err), "pairs": pairs}, indent=2))
        raise DpokitError(f"step {step}: {err}; the step's pairs ({', '.join(pairs[:8])}"
                          f"{', ...' if len(pairs) > 8 else ''}) are listed in {path}") from None


def _order(run: Run, first_step: int) -> Iterator[list[int]]:
    """The seeded batch stream, fast-forwarded past the batches of steps already done (a resume)."""
    lengths = token_counts(run.data.train)
    t = run.cfg.train
    order = batch_indices(lengths, t.batch_size, t.seed, t.shuffle, t.length_bucketing)
    for _ in range(first_step * t.grad_accum * run.parallel.world):
        next(order)
    return order


def _evaluate(run: Run, step: int, writer: TrackedWriter, callback: Callback | None) -> dict[str, float] | None:
    if callback is not None and (run.parallel.is_main or _collective(callback)):
        _run_callback(callback, step, run.policy, writer)
    if not run.data.eval:
        return None
    size = run.cfg.train.eval_batch_size or run.cfg.train.batch_size
    rows = batches(run.data.eval, size, run.tokenizer.pad_token_id, run.trainee.objective.unpaired, layout=run.layout)
    result = evaluate(run.eval_trainee, rows)
    writer.write({"step": step, "split": "eval", **result})
    return result


def _collective(callback: Callback) -> bool:
    """A callback marked `collective = True` runs on every process (through the wrapped engine, so it works on
    sharded weights too); any other runs on the main process alone."""
    return bool(getattr(callback, "collective", False))


def _run_callback(callback: Callback, step: int, policy: torch.nn.Module, writer: TrackedWriter) -> None:
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            result = callback(step, policy)
    finally:
        policy.train(was_training)
    if result:
        writer.write({"step": step, "split": "callback", **result})


