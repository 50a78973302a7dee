"""`train.compile` against eager, side by side in one run: is compiling worth its compile time?

Runs dpokit's default mode and the same with `train.compile=true` in alternating fresh processes (`--repeats`
rounds), on the benchmark fixture (run_dpokit.py), and prints per mode: the steady step time (median after
`--warmup` steps), the first steps' time (where compilation happens: the first batch, then the recompile with
dynamic shapes when the packed shape first changes), and from both the compile cost and the step at which the
compiled run catches up. Results: benchmarks/results/compile_step.json.

    .venv/bin/python benchmarks/compile_step.py --small --steps 4                       # development, ~2 min
    .venv/bin/python benchmarks/compile_step.py --model smollm2 --steps 8 --threads 2   # SmolLM2: ~15 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from compare_trl import RESULTS, run_one
from measure import add_shared_args, forward_args

MODES = ("default", "compiled")


def verdict(eager: list[dict], compiled: list[dict], warmup: int) -> dict[str, float | str]:
    """Steady s/step of each mode (median over repeats), the compiled run's extra time in its first `warmup`
    steps, and after how many steps that extra time is paid back (inf when compiling is not faster)."""
    def steady(runs):
        return statistics.median(r["median_s_per_step"] for r in runs)

    def first(runs):
        return statistics.median(sum(r["step_times_s"][:warmup]) for r in runs)

    e, c = steady(eager), steady(compiled)
    extra = first(compiled) - first(eager) - warmup * (c - e)  # what the first steps cost beyond steady running
    gain = e - c
    if extra <= 0:  # the first steps' times are noisier than the compile cost they hold
        verdict = "compile cost lost in the noise of the first steps: rerun on a quiet machine (--repeats 3)"
    elif gain > 0:
        verdict = f"compile wins after {extra / gain:.0f} steps"
    else:
        verdict = "compile does not win here: keep it off"
    return {"eager_s_per_step": e, "compiled_s_per_step": c, "speedup": e / c, "compile_cost_s": extra,
            "break_even_steps": extra / gain if gain > 0 and extra > 0 else float("inf"), "verdict": verdict,
            "loadavg_1m": max(r["loadavg_1m"] for r in [*eager, *compiled])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "compile_step.json"))
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1: the first steps compile, the rest are measured")
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            runs[mode].append(run_one(sys.executable, "run_dpokit.py",
                                      [*forward_args(args), "--mode", mode], f"compile-{mode}-{r}"))
    result = verdict(runs["default"], runs["compiled"], args.warmup)
    for key, value in result.items():
        print(f"{key:22s} {value:.3f}" if isinstance(value, float) else f"{key:22s} {value}")
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "verdict": result, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
