"""dpokit side of the PPO comparison: `dpokit.rlhf.ppo_trainer.train_ppo` on the PPO fixture, one JSON line out.

    python benchmarks/run_ppo_dpokit.py --small --iterations 2      # development
    python benchmarks/run_ppo_dpokit.py --iterations 6              # what compare_trl_ppo.py runs

Settings come from ppo_measure.py's shared flags (the same values the TRL runner gets); what dpokit needs besides:
the reward is the fixture's classifier (`reward.source=DIR`, scoring prompt + response: `reward.text=full`, as TRL's
reward model sees the whole sequence), no gradient clipping (`max_grad_norm=null`: TRL's PPO loop clips nothing),
sampling and no-grad forwards in chunks of `--forward-batch-size` rows, nothing saved.

Timing (ppo_measure.py): an iteration ends at `train_ppo`'s callback; the loop starts at the first `iteration` call;
generation is the time inside `sample`, the update starts when `optimise` is called. Measurement only: the wrapped
functions run unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import ppo_fixture
from ppo_measure import IterationClock, add_shared_args, emit, result

METRICS = ("reward", "kl", "response_length", "policy_loss", "value_loss", "clip_fraction", "time_s")


def ppo_config(args: argparse.Namespace, fix: ppo_fixture.PPOFixture, out_dir: str):
    from dpokit.core.sections import ModelConfig
    from dpokit.rewards.sources import RewardConfig
    from dpokit.rlhf.ppo_config import PPOConfig

    return PPOConfig(
        model=ModelConfig(name_or_path=fix.model, dtype="float32"), prompts=fix.prompts, chat=False,
        output_dir=out_dir, seed=args.seed,
        reward=RewardConfig(source=fix.reward_model, text="full"),
        iterations=args.iterations, rollout_batch_size=args.rollout_batch_size, minibatch_size=args.minibatch_size,
        ppo_epochs=args.ppo_epochs, max_new_tokens=args.max_new_tokens, lr=args.lr, max_grad_norm=None,
        clip_range=args.clip_range, value_clip_range=args.value_clip_range, vf_coef=args.vf_coef,
        gamma=args.gamma, lam=args.lam, whiten_advantages=True, beta=args.kl_coef, kl_target=None,
        sample_batch_size=args.forward_batch_size, forward_batch_size=args.forward_batch_size,
        log_every=1, progress=False, save=False, save_every=0,
    )


def instrument(clock: IterationClock) -> None:
    """Wraps `iteration`, `sample` and `optimise` in dpokit's PPO trainer module to feed the clock."""
    from dpokit.rlhf import ppo_trainer

    iteration, sample, optimise = ppo_trainer.iteration, ppo_trainer.sample, ppo_trainer.optimise

    def timed_iteration(*a, **kw):
        clock.start()
        return iteration(*a, **kw)

    def timed_sample(*a, **kw):
        begin = time.perf_counter()
        out = sample(*a, **kw)
        clock.add_generation(time.perf_counter() - begin)
        return out

    def timed_optimise(*a, **kw):
        clock.mark_update()
        return optimise(*a, **kw)

    ppo_trainer.iteration, ppo_trainer.sample, ppo_trainer.optimise = timed_iteration, timed_sample, timed_optimise


def run(args: argparse.Namespace) -> dict[str, object]:
    import torch

    from dpokit.rlhf.ppo_trainer import train_ppo

    if args.threads:
        torch.set_num_threads(args.threads)
    fix = ppo_fixture.build(args.small)
    clock = IterationClock()
    instrument(clock)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-dpokit-") as tmp:
        cfg = ppo_config(args, fix, tmp)
        start = time.perf_counter()
        train_ppo(cfg, callback=lambda it, policy: clock.end_iteration())
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") != "callback"]
    per_iteration = {k: [r[k] for r in rows] for k in METRICS}
    setup = (clock.loop_start or start) - start
    config = {"ppo_config": _plain(cfg), "torch_threads": torch.get_num_threads(),
              "num_params": fix.num_params, "reward_params": fix.reward_params, "prompt_tokens": fix.prompt_tokens}
    return result("dpokit", args, clock, setup, per_iteration, config)


def _plain(cfg) -> dict[str, object]:
    values = asdict(cfg)
    values.pop("output_dir", None)
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
