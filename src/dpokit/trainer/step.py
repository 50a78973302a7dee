"""One batch through policy, reference and objective; one optimizer step over accumulated micro-batches."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch

from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch
from dpokit.lm.logprobs import PolicyLogps, SequenceLogps
from dpokit.lm.reference import AdapterOff, FrozenModel, Reference
from dpokit.losses import LossInputs, LossOutput, LossParams, LossState, Objective
from dpokit.trainer.dist import Single
from dpokit.trainer.metrics import PreferenceMetrics
from dpokit.trainer.optim import NonFiniteError


@dataclass
class Forward:
    out: LossOutput
    logps: SequenceLogps


@dataclass
class Trainee:
    """What a step needs, built once: the model being trained and how its loss is computed."""

    policy: torch.nn.Module
    reference: Reference | None
    objective: Objective
    params: LossParams
    autocast: contextlib.AbstractContextManager | type = contextlib.nullcontext
    chunk_size: int = 1024  # response tokens per LM-head chunk on packed batches
    engine: torch.nn.Module | None = None  # computes the policy's log-probs; default PolicyLogps(policy), or wrapped
    parallel: Single = field(default_factory=Single)  # the process group: one process unless a dist.Parallel
    metrics: type[PreferenceMetrics] = PreferenceMetrics  # what a step reports (dpokit rm: its RewardMetrics)
    # what the objective keeps across steps (BCO's δ); shared by a run's train and eval trainees, checkpointed
    loss_state: LossState = field(default_factory=LossState)

    def __post_init__(self) -> None:
        if self.engine is None:
            self.engine = PolicyLogps(self.policy, self.chunk_size)


def forward(trainee: Trainee, batch: Batch | PackedBatch, update_state: bool = False) -> Forward:
    """Policy (with grad) and reference (without) log-probs of every response, then the objective.

    When the objective needs the reference's token distributions (the `kl` term), the reference gives its hidden
    states first and the policy's chunked head computes the token KL and both models' log-probs in one pass.
    With `update_state` (training micro-batches; every process calls it alike), the objective's running statistics
    take this batch in, summed over the processes, before the loss reads them.
    """
    batch = batch.to(next(trainee.policy.parameters()).device)  # so reference rows and labels share its device
    asks = {"sum_sq": True} if trainee.objective.needs_log_sum_sq_probs else {}  # WPO's log Σ_v πθ(v)²
    if trainee.objective.needs_reference_distributions:
        states = _live(trainee.reference).states(batch)
        with trainee.autocast():
            logps = trainee.engine(batch, states, **asks)
        ref, ref_tokens = logps.reference_logps, None
    else:
        # the reference first: its no-grad forward then runs while none of the policy's activations are held, so
        # its transient memory does not stack on theirs (a lower peak) and it reuses memory instead of faulting in
        # fresh pages (measured ~9% of its forward on SmolLM2, CPU)
        ref, ref_tokens = _reference_logps(trainee, batch)
        with trainee.autocast():
            logps = trainee.engine(batch, **asks)
    inputs = LossInputs(
        policy_logps=logps.logps,
        num_tokens=logps.num_tokens,
        reference_logps=ref,
        policy_token_logps=logps.token_logps,
        token_mask=logps.token_mask,
        labels=batch.labels,
        kl=logps.kl,
        reference_token_logps=ref_tokens,
        log_sum_sq_probs=logps.log_sum_sq_probs,
    )
    if update_state:
        stats = trainee.objective.statistics(inputs, trainee.params)
        trainee.loss_state.update(stats, trainee.parallel.sum)
    return Forward(trainee.objective(inputs, trainee.params, trainee.loss_state), logps)


def _reference_logps(trainee: Trainee, batch: Batch | PackedBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The reference's (B, K) summed log-probs, and its (B, K, T) per-token ones when the objective reads them."""
    if trainee.reference is None:
        return None, None
    if trainee.objective.needs_reference_token_logps:
        seq = _live(trainee.reference).sequence(batch)
        return seq.logps, seq.token_logps
    return trainee.reference.logps(batch), None


def _live(reference: Reference | None) -> FrozenModel | AdapterOff:
    """The reference as a live model; a trainer bug otherwise (`assembly.plan_reference` refuses the config first)."""
    if not isinstance(reference, FrozenModel | AdapterOff):
        raise ValueError(f"the objective needs a live reference model (copy or adapter off), got {reference!r}")
    return reference


def train_step(
    trainee: Trainee,
    micro_batches: list[Batch | PackedBatch],
    optimizer: torch.optim.Optimizer,
    scheduler,
    max_grad_norm: float | None,
) -> dict[str, float]:
    """Accumulates gradients of the mean loss over all examples of `micro_batches`, clips, steps.

    Raises:
        NonFiniteError: the loss (checked first, before any step) or the gradient norm is NaN or infinite.
    """
    start = time.perf_counter()
    metrics, group = trainee.metrics(), trainee.parallel
    # every process holds the same number of examples; DDP averages gradients over processes, hence `* world`
    total = sum(b.num_examples for b in micro_batches) * group.world
    tokens = 0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with group.no_sync(trainee.engine, not last):
            fwd = forward(trainee, batch, update_state=True)
            group.backward(fwd.out.losses.sum() * group.world / total, last)
        metrics.add(fwd.out, fwd.logps, batch.labels)
        tokens += _real_tokens(batch)
    metrics.reduce(group.sum)
    tokens = int(group.sum([tokens])[0])
    means = metrics.means()
    if not math.isfinite(means["loss"]):  # the same sum on every process: all stop here, before any step
        raise NonFiniteError(f"non-finite loss ({means['loss']}); the optimizer step was not taken")
    lr = optimizer.param_groups[0]["lr"]
    grad_norm = group.clip_and_step(optimizer, max_grad_norm)
    scheduler.step()
    elapsed = time.perf_counter() - start
    return {
        **means,
        **{f"running_mean/{name}": held.mean for name, held in trainee.loss_state.means.items()},
        "grad_norm": float(grad_norm),
        "lr": lr,
        "step_time_s": elapsed,
        "pairs_per_s": total / elapsed,
        "tokens_per_s": tokens / elapsed,
    }


def _real_tokens(batch: Batch | PackedBatch) -> int:
    """Non-pad tokens of the prompt + response sequences, whatever the layout (a shared prompt counts K times),
    so tokens_per_s compares across layouts and tools."""
    return batch.num_sequence_tokens if isinstance(batch, PackedBatch) else int(batch.attention_mask.sum())


@torch.no_grad()
def evaluate(trainee: Trainee, batches) -> dict[str, float]:
    """Means over all examples of `batches`, deterministic (eval mode, no shuffling by the caller)."""
    was_training = trainee.policy.training
    trainee.policy.eval()
    metrics, group = trainee.metrics(), trainee.parallel
    # processes split the batches between them, except when sharded: every forward is then a collective that all
    # processes must join, so each evaluates every batch (and the sums need no reduction)
    rank, world = (0, 1) if group.sharded else (group.rank, group.world)
    try:
        for i, batch in enumerate(batches):
            if i % world == rank:  # each process evaluates its share; the sums are combined below
                fwd = forward(trainee, batch)
                metrics.add(fwd.out, fwd.logps, batch.labels)
    finally:
        trainee.policy.train(was_training)
    if not group.sharded:
        metrics.reduce(group.sum)
    return {**metrics.means(), "num_pairs": metrics.num_examples}
