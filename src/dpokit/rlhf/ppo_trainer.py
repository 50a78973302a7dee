"""`dpokit ppo`: PPO-RLHF, the DPO paper's RL baseline (Ziegler et al. 2019; Stiennon et al. 2020).

    train_ppo(cfg)
      build(cfg)                        config checked, reward loaded, prompts read, policy + value head, πref, Adam
      resume (cfg.resume)               trainer/runtime.py: weights + value head, Adam, β, RNG, metrics.jsonl
      for each iteration:
        collect(...)                    rollout: sample (temperature 1) -> reward -> π_old, πref, V -> GAE
        optimise(...)                   ppo_epochs x minibatches: clipped surrogate + vf_coef * clipped value loss
        β update (adaptive KL), metrics.jsonl, progress, checkpoint every save_every
        callback(iteration, policy)     optional (the frontier's held-out evaluation); main process, eval mode
        SIGTERM/SIGINT -> checkpoint, exit with how to resume
      save policy + tokenizer (safetensors), value_head.safetensors, summary.json

One or several processes (`accelerate launch`, `torchrun`): each samples its share of every rollout batch and of every
minibatch; gradients are all-reduced by the process group's wrapper (trainer/dist.py: DDP, ZeRO-1/2, or sharded:
FSDP2, ZeRO-3), losses divided by the global token count so the step is that of the whole minibatch, advantages
whitened with global moments, metrics summed over processes. Sharded, every process samples in step through the
sharded policy (each forward gathers the weights it needs) and the frozen πref copy is sharded too.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError, DpokitError
from dpokit.core.progress import progress
from dpokit.core.sections import ModelConfig, SamplingSettings, Tracking
from dpokit.data.prompts import Prompt, read_prompts
from dpokit.lm.sampling import sample
from dpokit.models.loading import load_model, tokenizer_of
from dpokit.models.sampling import use_chat
from dpokit.rewards.sources import Reward
from dpokit.rlhf import ppo
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.rlhf.rollout import (
    ActorCritic,
    AdapterOffActor,
    FrozenActor,
    Rollout,
    Rows,
    advantages_of,
    response_outputs,
    score_tokens,
)
from dpokit.trainer.assembly import build_policy
from dpokit.trainer.dist import Parallel, StepShape
from dpokit.trainer.optim import NonFiniteError, optimizer_for
from dpokit.trainer.runtime import Interrupted, StopSignals, checkpoint, resume, save_model
from dpokit.trainer.trackers import TrackedWriter, metrics_writer

PPOCallback = Callable[[int, torch.nn.Module], dict[str, float] | None]


@dataclass
class PPORun:
    """Everything an iteration needs, built once by `build`."""

    cfg: PPOConfig
    out_dir: Path
    tokenizer: object
    prompts: list[Prompt]
    reward: Reward
    chat: bool
    actor_critic: ActorCritic  # the policy and its value head, unwrapped (sampling, saving, checkpoints)
    engine: torch.nn.Module  # the same, as the process group runs it (DDP, DeepSpeed's engine, or FSDP2-sharded)
    reference: FrozenActor | AdapterOffActor
    optimizer: torch.optim.Optimizer
    kl: ppo.FixedKL  # or ppo.AdaptiveKL; checkpointed in the scheduler's slot (it has state_dict / load_state_dict)
    parallel: Parallel


@dataclass
class PPOSummary:
    output_dir: str
    iterations: int
    seconds: float
    final: dict[str, float]
    processes: int = 1
    replica_digests: list[str] | None = None  # hash of each process's weights at the end: all equal when in sync
    sharded: bool = False  # FSDP or ZeRO-3: each process held only its part of the weights (no replicas to hash)


def build(cfg: PPOConfig, reward: Reward | None = None) -> PPORun:
    """Checks the config and loads (reward and prompts first: their errors come before any model loads).
    `reward`, when given, replaces `cfg.reward` (a caller that already holds one, e.g. the frontier's)."""
    config_io.validate(cfg, require=("model.name_or_path", "prompts", "output_dir"))
    reward, prompts = reward or cfg.reward.load(), read_prompts(cfg.prompts)
    parallel = Parallel(fsdp=cfg.fsdp)
    if cfg.minibatch_size % parallel.world:
        raise ConfigError(f"minibatch_size ({cfg.minibatch_size}) must be divisible by the number of processes "
                          f"({parallel.world})")
    tokenizer = tokenizer_of(cfg.model)
    chat = use_chat(tokenizer, cfg.chat, cfg.model.name_or_path)
    out_dir = Path(cfg.output_dir)
    if parallel.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_io.save(cfg, out_dir / "config.yaml")
    torch.manual_seed(cfg.seed)  # LoRA's initial adapters: the same in every process (FSDP shards them as they are)
    actor_critic = ActorCritic(build_policy(cfg.model, parallel.device)).to(parallel.device).train()
    reference = reference_actor(cfg.model, actor_critic, parallel.device)
    # the optimizer takes the value head's parameters too, not only those of the LM (`engine.model`) wrap offers
    step = StepShape(cfg.minibatch_size // parallel.world, 1, cfg.max_grad_norm)  # what DeepSpeed is told
    engine, optimizer = parallel.wrap(actor_critic, None, lambda _: optimizer_for(trainable(actor_critic), "adamw",
                                                                                  cfg.lr), step)
    if isinstance(reference, AdapterOffActor):
        reference.run_through(engine)  # the policy as the group runs it (sharded: its forward gathers the weights)
    else:
        reference = parallel.frozen(reference)
    if parallel.sharded:  # FSDP2 takes the module of the first forward for its root: the actor-critic's, not
        pad = tokenizer.pad_token_id  # an inner module's in generation
        score_tokens(engine, Rows.build([[pad]], [[pad]], pad).to(parallel.device), 1)
    kl = ppo.AdaptiveKL(cfg.beta, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target else ppo.FixedKL(cfg.beta)
    return PPORun(cfg, out_dir, tokenizer, prompts, reward, chat, actor_critic, engine, reference, optimizer, kl,
                  parallel)


def reference_actor(cfg: ModelConfig, actor_critic: ActorCritic,
                    device: torch.device) -> FrozenActor | AdapterOffActor:
    """πref: with LoRA the policy with its adapter off (no second copy), else a frozen copy of the starting model."""
    if cfg.lora.enabled:
        return AdapterOffActor(actor_critic)
    return FrozenActor(load_model(cfg.name_or_path, cfg, cfg.gguf_file)).to(device)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer steps: all of them, or with LoRA the adapters and the value head."""
    return [p for p in module.parameters() if p.requires_grad]


def train_ppo(cfg: PPOConfig, callback: PPOCallback | None = None, reward: Reward | None = None) -> PPOSummary:
    """Runs PPO as configured; see the module docstring and README (`dpokit ppo`).

    Args:
        cfg: the run's settings.
        callback: called as `callback(iteration, policy)` after every iteration (1-based), on the main process (on
            every process, in step, if it has `collective = True`; required with sharded weights), with
            the policy in eval mode and gradients off; it decides itself when to act (e.g. every k iterations and at
            `cfg.iterations`). A dict it returns goes to metrics.jsonl with `"split": "callback"`.
        reward: a loaded reward to use instead of `cfg.reward`.
    """
    start = time.perf_counter()
    run = build(cfg, reward)
    try:
        return _train(run, start, callback)
    finally:
        run.engine = None  # the DDP wrapper goes before its process group
        run.parallel.close()


def _train(run: PPORun, start: float, callback: PPOCallback | None = None) -> PPOSummary:
    cfg, main = run.cfg, run.parallel.is_main
    if callback is not None and run.parallel.sharded and not getattr(callback, "collective", False):
        raise ConfigError("a PPO callback runs on the main process alone, which with FSDP / ZeRO-3 holds only part of "
                          "the policy and cannot run forwards the other processes do not join: mark it collective "
                          "(callback.collective = True: every process runs it, in step) or evaluate the saved model")
    first = resume(run.out_dir, run.cfg.resume, run.actor_critic, run.optimizer, run.kl, run.parallel,
                   f"iteration {{}}/{run.cfg.iterations}")
    writer = metrics_writer(run.out_dir, Tracking.of(cfg), config_io.to_dict(cfg), first, main, "iteration")
    with closing(writer):  # metrics.jsonl and the trackers (report_to), closed also when a run stops early
        last = _iterations(run, first, writer, callback)
    digests = run.parallel.replica_digests(run.actor_critic)
    if len(set(digests)) > 1:  # each process sampled other responses: only all-reduced gradients keep them equal
        raise DpokitError(f"the {len(digests)} processes ended with different weights ({digests}): gradients were not "
                          "synchronised")
    if cfg.save:
        save(run)
    summary = PPOSummary(str(run.out_dir), cfg.iterations, time.perf_counter() - start, last, run.parallel.world,
                         digests, run.parallel.sharded)
    if main:
        (run.out_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


def save(run: PPORun) -> None:
    """The policy + tokenizer (a LoRA policy merged, plus adapter/) and value_head.safetensors, written by the main
    process. Sharded weights are gathered first (every process takes part); a sharded LoRA policy is rebuilt whole
    from them, so it can be merged as usual."""
    cfg, group = run.cfg, run.parallel
    state = group.full_state(run.actor_critic) if group.sharded else None
    if not group.is_main:
        group.barrier()
        return
    policy, weights = run.actor_critic.model, None
    head = {k: v.detach().cpu().contiguous() for k, v in run.actor_critic.value_head.state_dict().items()}
    if state is not None:
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        head = {k.removeprefix("value_head."): v for k, v in state.items() if k.startswith("value_head.")}
        if cfg.model.lora.enabled:
            policy = build_policy(cfg.model, torch.device("cpu"))
            policy.load_state_dict(weights, strict=True)
            weights = None
    save_model(policy, run.tokenizer, run.out_dir, weights, base=cfg.model.name_or_path)
    save_file(head, str(run.out_dir / "value_head.safetensors"))
    group.barrier()


def _iterations(run: PPORun, first: int, writer: TrackedWriter, callback: PPOCallback | None) -> dict[str, float]:
    """Iterations `first`+1 .. `cfg.iterations` with their metrics, callbacks and checkpoints; a signal stops them
    after a checkpoint (`Interrupted`). Returns the last iteration's metrics."""
    cfg, main = run.cfg, run.parallel.is_main
    bar = progress(range(first, cfg.iterations), cfg.iterations, every=cfg.log_every, enabled=cfg.progress and main,
                   desc="ppo")
    last: dict[str, float] = {}
    with StopSignals(announce=main) as stop:
        for it in bar:
            try:
                last = iteration(run, it)
            except NonFiniteError as err:
                raise DpokitError(f"ppo iteration {it + 1}: {err}") from None
            writer.write({"iteration": it + 1, **last})
            bar.set_postfix(reward=f"{last['reward']:.4f}", kl=f"{last['kl']:.3f}", beta=f"{last['beta']:.4g}")
            if callback is not None and (main or getattr(callback, "collective", False)):
                _call_back(run, it + 1, callback, writer)
            stopping = run.parallel.any(stop.signum is not None)  # every process stops after the same iteration
            if stopping or (cfg.save_every and (it + 1) % cfg.save_every == 0):
                path = checkpoint(run.out_dir, run.actor_critic, run.optimizer, run.kl, it + 1, writer,
                                  cfg.keep_checkpoints, run.parallel)
                if stopping:
                    signum = stop.signum or signal.SIGTERM
                    raise Interrupted(f"stopped by signal {signum} after iteration {it + 1}/{cfg.iterations}; "
                                      f"checkpoint: {path}; continue with the same command plus --resume", signum)
    return last


def _call_back(run: PPORun, it: int, callback: PPOCallback, writer: TrackedWriter) -> None:
    """`callback(it, policy)` in eval mode without gradients; training mode again after."""
    policy = run.actor_critic.model
    policy.eval()
    with torch.no_grad():
        extra = callback(it, policy)
    policy.train()
    if extra:
        writer.write({"iteration": it, "split": "callback", **extra})


def iteration(run: PPORun, it: int) -> dict[str, float]:
    """One rollout batch, then its optimisation epochs, then the β update. Returns the iteration's metrics."""
    start = time.perf_counter()
    beta = run.kl.beta
    rollout = collect(run, it)
    losses = optimise(run, rollout, it)
    stats = rollout_stats(rollout, run.parallel)
    run.kl.update(stats["kl"], run.cfg.rollout_batch_size)
    return {**stats, **losses, "beta": beta, "time_s": time.perf_counter() - start}


def collect(run: PPORun, it: int) -> Rollout:
    """This process's share of iteration `it`'s rollout batch: prompts in a seeded order, responses sampled from the
    current policy at temperature 1, scored; π_old's and πref's log-probs and the values; rewards and GAE."""
    cfg, group = run.cfg, run.parallel
    share = cfg.rollout_batch_size // group.world
    order = prompt_order(len(run.prompts), it, cfg.rollout_batch_size, cfg.seed)[group.rank * share:][:share]
    settings = SamplingSettings(cfg.max_new_tokens, 1.0, 1.0, cfg.sample_batch_size)
    with group.sampling(run.engine):
        samples = sample(run.actor_critic.model, run.tokenizer, [run.prompts[i] for i in order], settings,
                         seed=draw_seed(cfg.seed, it, group.rank), chat=run.chat, synced=group.sharded)
    device = group.device
    scores = torch.tensor(run.reward(samples.prompts, samples.completions), device=device)
    rows = Rows.build(samples.prompt_ids, samples.completion_ids, run.tokenizer.pad_token_id).to(device)
    old = score_tokens(run.engine, rows, cfg.forward_batch_size)
    ref = score_tokens(run.reference, rows, cfg.forward_batch_size)
    advantages, returns = advantages_of(scores, old, ref, rows.mask, run.kl.beta, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = ppo.whiten(advantages, rows.mask, tuple(group.sum(list(ppo.moments(advantages, rows.mask)))))
    return Rollout(rows, scores, old.logprobs, ref.logprobs, old.values, old.entropy, advantages, returns)


def optimise(run: PPORun, rollout: Rollout, it: int) -> dict[str, float]:
    """`ppo_epochs` passes over the rollout, each reshuffled (seeded) into minibatches, one Adam step each."""
    cfg, group = run.cfg, run.parallel
    per_step = cfg.minibatch_size // group.world
    shuffle = torch.Generator().manual_seed(draw_seed(cfg.seed, it, group.rank))
    totals = torch.zeros(5, dtype=torch.float64)
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(len(rollout), generator=shuffle)
        for start in range(0, len(rollout), per_step):
            totals += minibatch_step(run, rollout, order[start:start + per_step].to(group.device))
    steps = cfg.ppo_epochs * (len(rollout) // per_step)
    means = [v / (steps * group.world) for v in group.sum(totals.tolist())]
    return dict(zip(("policy_loss", "value_loss", "clip_fraction", "approx_kl", "grad_norm"), means, strict=True))


def minibatch_step(run: PPORun, rollout: Rollout, index: torch.Tensor) -> torch.Tensor:
    """One optimizer step on rows `index` of the rollout. Returns (policy loss, value loss, clip fraction, approx
    KL, gradient norm) of this process, each to be averaged over steps and processes.

    Raises:
        NonFiniteError: the loss (on any process: all stop together, before the step) or the gradient norm.
    """
    cfg, group = run.cfg, run.parallel
    rows = rollout.rows.select(index)
    # DDP averages gradients over processes: dividing by the global token count / world gives the global mean
    num_tokens = group.sum([float(rows.mask.sum())])[0] / group.world
    new = response_outputs(run.engine, rows)
    policy = ppo.ppo_policy_loss(new.logprobs, rollout.logprobs[index], rollout.advantages[index], rows.mask,
                                 cfg.clip_range, num_tokens)
    values = ppo.value_loss(new.values, rollout.values[index], rollout.returns[index], rows.mask,
                            cfg.value_clip_range, num_tokens)
    loss = policy.loss + cfg.vf_coef * values
    if group.any(not bool(torch.isfinite(loss))):
        raise NonFiniteError(f"non-finite loss ({float(loss)}); the optimizer step was not taken")
    group.backward(loss, True)
    norm = group.clip_and_step(run.optimizer, cfg.max_grad_norm)
    return torch.tensor([policy.loss.item(), values.item(), policy.clip_fraction.item(), policy.approx_kl.item(),
                         float(norm)], dtype=torch.float64)


def rollout_stats(rollout: Rollout, group: Parallel) -> dict[str, float]:
    """Means over the whole rollout batch (all processes): reward, sequence KL Σ_t (log π_old − log πref) over the
    sampled tokens (its expectation is KL(π_old ‖ πref)), per-token entropy (of the whole next-token distribution),
    response length in tokens."""
    mask = rollout.rows.mask
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1)
    sums = group.sum([float(rollout.scores.sum()), float(kl.sum()), float(rollout.entropy.sum()),
                      float(mask.sum()), float(len(rollout))])
    score, kl_sum, entropy, tokens, n = sums
    return {"reward": score / n, "kl": kl_sum / n, "entropy": entropy / tokens, "response_length": tokens / n}


def prompt_order(num_prompts: int, it: int, batch: int, seed: int) -> list[int]:
    """Prompt indices of iteration `it`'s rollout batch: a stream of seeded permutations of all prompts (one per
    pass), cut into batches of `batch`. A function of (it, seed) only, so a resumed run draws the same prompts.

    >>> prompt_order(3, 0, 4, seed=0) + prompt_order(3, 1, 4, seed=0) == prompt_order(3, 0, 8, seed=0)
    True
    """
    out = []
    for k in range(it * batch, (it + 1) * batch):
        epoch, pos = divmod(k, num_prompts)
        out.append(int(torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + 7919 * epoch))[pos]))
    return out


def draw_seed(seed: int, it: int, rank: int) -> int:
    """The seed of iteration `it`'s draws on process `rank`: distinct per iteration and process, fixed by them."""
    return (seed * 1_000_003 + it * 65_537 + rank * 257) % 2**62


