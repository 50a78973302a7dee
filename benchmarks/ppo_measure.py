"""What both PPO runners share: the command line (the matched settings), the clock, and the result line.

Standard library only: the driver imports this too, and a driver holding torch would inflate every child's
ru_maxrss (a child's peak starts from its parent's when it execs).

One PPO iteration = one rollout (generate, score, the no-grad forwards, advantages) + its update (`ppo_epochs` passes
over the rollout in minibatches, one optimizer step each) + the trainer's own per-iteration bookkeeping. Both
runners time it the same way: the wall time between consecutive end-of-iteration hooks (TRL: `on_step_end`; dpokit:
`train_ppo`'s callback), the first from the start of the training loop. The first `--warmup` iterations are left
out of every statistic in both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import measure
from measure import peak_hwm_gib, peak_rss_gib

SHARED = ("iterations", "warmup", "rollout_batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens",
          "forward_batch_size", "lr", "clip_range", "value_clip_range", "vf_coef", "gamma", "lam", "kl_coef", "seed",
          "threads")  # forwarded by the driver to both runners unchanged


def add_shared_args(parser: argparse.ArgumentParser) -> None:
    """The settings both runners take with the same meaning (see README.md, "PPO: what is matched")."""
    parser.add_argument("--small", action="store_true", help="2.5M-parameter development fixture")
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations (rollout + update)")
    parser.add_argument("--warmup", type=int, default=1, help="leading iterations left out of the statistics")
    parser.add_argument("--rollout-batch-size", type=int, default=32, help="responses sampled per iteration")
    parser.add_argument("--minibatch-size", type=int, default=8, help="responses per optimizer step")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="passes over each rollout batch")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="response budget (stop at eos)")
    parser.add_argument("--forward-batch-size", type=int, default=32,
                        help="rows per generate call and per no-grad forward in the rollout")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam(W) learning rate, constant")
    parser.add_argument("--clip-range", type=float, default=0.2)
    parser.add_argument("--value-clip-range", type=float, default=0.2)
    parser.add_argument("--vf-coef", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=0.95)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="β of the per-token KL penalty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")


def forward_args(args: argparse.Namespace) -> list[str]:
    """The driver's values of the shared settings, as runner flags."""
    return measure.forward_args(args, SHARED)


class IterationClock:
    """Wall-clock marks of one run: loop start, each iteration's end, generation and update spans within it."""

    def __init__(self) -> None:
        self.loop_start: float | None = None
        self.ends: list[float] = []
        self.generation_s: list[float] = []  # per iteration: time inside the generate calls
        self.update_start: list[float] = []  # per iteration: when the first gradient-carrying forward began

    def start(self) -> None:
        self.loop_start = self.loop_start or time.perf_counter()

    def end_iteration(self) -> None:
        self.ends.append(time.perf_counter())

    def add_generation(self, seconds: float) -> None:
        """Adds to the current iteration's generation time (several generate calls per rollout are summed)."""
        while len(self.generation_s) <= len(self.ends):
            self.generation_s.append(0.0)
        self.generation_s[len(self.ends)] += seconds

    def mark_update(self) -> None:
        if len(self.update_start) == len(self.ends):  # the first gradient-carrying forward of this iteration
            self.update_start.append(time.perf_counter())

    def iteration_s(self) -> list[float]:
        marks = [self.loop_start, *self.ends]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]

    def update_s(self) -> list[float]:
        return [end - start for start, end in zip(self.update_start, self.ends, strict=False)]


def _median(values: list[float], warmup: int) -> float | None:
    kept = values[warmup:] if len(values) > warmup else values
    return statistics.median(kept) if kept else None


def result(system: str, args: argparse.Namespace, clock: IterationClock, setup_s: float,
           per_iteration: dict[str, list[float]], config: dict[str, object]) -> dict[str, object]:
    """The runner's result line: per-iteration times, their medians after the warm-up, peak memory, load."""
    times, update = clock.iteration_s(), clock.update_s()
    return {
        "system": system, "iterations": len(times), "warmup": args.warmup,
        "iteration_s": times, "generation_s": clock.generation_s[:len(times)], "update_s": update,
        "median_s_per_iteration": _median(times, args.warmup),
        "median_generation_s": _median(clock.generation_s[:len(times)], args.warmup),
        "median_update_s": _median(update, args.warmup),
        "setup_s": setup_s, "peak_rss_gib": peak_rss_gib(), "peak_hwm_gib": peak_hwm_gib(),
        "loadavg_1m": os.getloadavg()[0], "per_iteration": per_iteration, "config": config,
    }


def emit(line: dict[str, object]) -> None:
    print(json.dumps(line), flush=True)
