"""TRL 1.16 vs dpokit, side by side in one run: same fixture, batch, max_length, β, lr, optimizer; CPU fp32.

    .venv/bin/python benchmarks/compare_trl.py --small --steps 3 --limit 64  # development: a few minutes
    .venv/bin/python benchmarks/compare_trl.py --steps 6 --limit 128        # the README table
    .venv/bin/python benchmarks/compare_trl.py --model smollm2 --steps 5 --limit 64 --wait-idle 900  # SmolLM2: ~30 min

Each `--compare TRL_MODE:DPOKIT_MODE` is one row pair of the table; runs alternate TRL, dpokit, TRL, dpokit, ...
(`--repeats` rounds), each in a fresh process so peak RSS is that system's alone. Then a loss-parity check: both
systems compute the first batch's loss with a *different* model as reference (policy == reference would make every
loss exactly ln 2), and the driver reports |Δ| of the loss and of the summed log-probs.

It also measures this machine's fp32 matmul peak (matmul_peak.py, before and after the timed runs), counts each
step's minimal work (flops.py) and reports every system's rate on it as a share of that peak, judges issue 10's
targets, and, where one is missed (`--profile auto`), profiles dpokit's default mode (profile_dpokit.py).

This driver imports only the standard library on purpose: a child's ru_maxrss starts from the parent's peak when it
execs, so a driver holding torch would inflate every measured RSS. Results: benchmarks/results/compare_trl.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import flops
from measure import add_shared_args, after_warmup, cpu_snapshot, forward_args, other_cores, versions
from report import flop_lines, markdown, parity_rows, summary_rows

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
LOGS = BENCH_DIR / ".cache" / "logs"
PARITY_TOLERANCE = 1e-4
# The runner's own threads keep the load near the core count; a competing job pushes it past this.
CONTENDED_LOAD = (os.cpu_count() or 1) + 0.5
CONTENDED_CORES = 0.25  # other processes' average busy cores over a run (the runner's own CPU left out)
IDLE_CORES = 0.3  # --wait-idle: start a run once other processes use less than this over a 3 s sample
PAIRS = {"random": ["default:default", "precompute:precomputed", "precompute:lean"],
         "smollm2": ["default:default", "precompute:lean"]}  # issue 10: default and lean modes


def run_one(python: str, script: str, argv: list[str], tag: str, prefix: str = '{"system"', wait_s: float = 0) -> dict:
    """Runs a script in a fresh process; its stderr goes to a log file, its last JSON result line is returned.

    With `wait_s` > 0 it first waits, up to that long, for the other processes on the machine to go quiet.
    """
    waited = wait_for_idle(wait_s) if wait_s > 0 else {}
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{tag}.log"
    cmd = [python, str(BENCH_DIR / script), *argv]
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    results = [line for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode != 0 or not results:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return {**json.loads(results[-1]), **waited}


def wait_for_idle(limit_s: float) -> dict:
    """Polls until other processes use fewer than IDLE_CORES cores (3 s samples), or `limit_s` has passed."""
    start = time.monotonic()
    while True:
        since = cpu_snapshot()
        time.sleep(3)
        busy = other_cores(since)
        if busy is None or busy < IDLE_CORES or time.monotonic() - start >= limit_s:
            return {"idle_wait_s": round(time.monotonic() - start, 1), "other_cores_at_start": busy}


def build_fixture(python: str, small: bool, model: str) -> dict:
    cmd = [python, str(BENCH_DIR / "fixture.py"), "--model", model] + (["--small"] if small else [])
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def timing_runs(args: argparse.Namespace) -> list[dict]:
    """Alternates TRL and dpokit for every comparison, `--repeats` rounds."""
    shared = forward_args(args)
    runs = []
    for round_ in range(1, args.repeats + 1):
        for pair in args.compare:
            trl_mode, dpokit_mode = pair.split(":")
            trl_argv = [*shared, "--mode", trl_mode, *_sets(args.trl_set)]
            dpokit_argv = [*shared, "--mode", dpokit_mode, *_sets(args.dpokit_set)]
            runs.append(run_one(args.trl_python, "run_trl.py", trl_argv, f"trl-{trl_mode}-{round_}",
                                wait_s=args.wait_idle))
            runs.append(run_one(args.python, "run_dpokit.py", dpokit_argv, f"dpokit-{dpokit_mode}-{round_}",
                                wait_s=args.wait_idle))
    return runs


def parity_runs(args: argparse.Namespace, ref_model: str) -> dict:
    """One step of each system on the same first batch, against a second random model as the reference."""
    base = _without(forward_args(args), ("--steps", "--limit"))
    argv = [*base, "--steps", "1", "--limit", str(4 * args.batch_size), "--ref-model", ref_model]
    trl = run_one(args.trl_python, "run_trl.py", [*argv, "--mode", "default", *_sets(args.trl_set)], "parity-trl")
    dpokit = run_one(args.python, "run_dpokit.py", [*argv, "--mode", "default", *_sets(args.dpokit_set)],
                     "parity-dpokit")
    deltas = {k: abs(trl["first_batch"][k] - dpokit["first_batch"][k]) for k in trl["first_batch"]}
    return {"trl": trl["first_batch"], "dpokit": dpokit["first_batch"], "abs_diff": deltas,
            "tokens": {"trl": trl["step_tokens"][0], "dpokit": dpokit["step_tokens"][0]},
            "tolerance": PARITY_TOLERANCE, "passed": deltas["loss"] <= PARITY_TOLERANCE}


def matmul_peak(args: argparse.Namespace, tag: str) -> dict:
    """The fp32 matmul peak, in a fresh process with the runners' thread count."""
    argv = ["--threads", str(args.threads)] if args.threads else []
    return run_one(args.python, "matmul_peak.py", argv, tag, prefix='{"peak_gflops"', wait_s=args.wait_idle)


def profile(args: argparse.Namespace) -> dict:
    """dpokit's default mode under torch.profiler: where a step's time goes (profile_dpokit.py)."""
    argv = [*_without(forward_args(args), ("--steps",)), "--mode", "default", "--profile-steps",
            str(args.profile_steps), *_sets(args.dpokit_set)]
    return run_one(args.python, "profile_dpokit.py", argv, "profile-dpokit", prefix='{"profile"',
                   wait_s=args.wait_idle)["profile"]


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in flags:
            skip = True
        else:
            out.append(item)
    return out


def _sets(items: list[str]) -> list[str]:
    return ["--set", *items] if items else []


def aggregate(runs: list[dict], system: str, mode: str, warmup: int) -> dict:
    """Per run, from its raw step times: the mean over the measured steps (total time / steps: every run times the
    same batches, which differ in length, so a median step would stand for one batch, not the run) and tokens/s as
    total tokens / total time; then the median over repeats."""
    mine = [r for r in runs if r["system"] == system and r["mode"] == mode]
    measured = [_measured(r, warmup) for r in mine]
    mean_step = statistics.median(sum(times) / len(times) for times, _ in measured)
    return {
        "system": system, "mode": mode, "runs": len(mine), "mean_s_per_step": mean_step,
        "s_per_step_by_run": [sum(times) / len(times) for times, _ in measured],
        "pairs_per_s": mine[0]["batch_size"] / mean_step,
        "tokens_per_s": statistics.median(sum(tokens) / sum(times) for times, tokens in measured),
        "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in mine),
        "setup_s": statistics.median(r["setup_s"] for r in mine),
        "first_batch_loss": mine[0]["first_batch"].get("loss"),
        "train_pairs": mine[0]["config"].get("train_pairs"),
    }


def _measured(run: dict, warmup: int) -> tuple[list[float], list[int]]:
    return after_warmup(run["step_times_s"], warmup), after_warmup(run["step_tokens"], warmup)


def comparisons(args: argparse.Namespace, runs: list[dict]) -> list[dict]:
    """Per TRL_MODE:DPOKIT_MODE pair: both aggregates, the ratios, and the checks that give the ratios meaning."""
    out = []
    for pair in args.compare:
        trl_mode, dpokit_mode = pair.split(":")
        trl, dpokit = aggregate(runs, "trl", trl_mode, args.warmup), aggregate(runs, "dpokit", dpokit_mode, args.warmup)
        ratios = {
            "pairs_per_s": dpokit["pairs_per_s"] / trl["pairs_per_s"],
            "tokens_per_s": dpokit["tokens_per_s"] / trl["tokens_per_s"],
            "peak_rss_gib": dpokit["peak_rss_gib"] / trl["peak_rss_gib"],
            "mean_s_per_step": dpokit["mean_s_per_step"] / trl["mean_s_per_step"],
        }
        mine = [("trl", trl_mode), ("dpokit", dpokit_mode)]
        same_tokens = [r["step_tokens"] for r in runs if (r["system"], r["mode"]) in mine]
        needed = args.steps * args.batch_size  # more than the data holds: the systems wrap epochs differently
        loads = [r["loadavg_1m"] for r in runs if (r["system"], r["mode"]) in mine]
        others = [r.get("other_cores") or 0.0 for r in runs if (r["system"], r["mode"]) in mine]
        out.append({"trl": trl, "dpokit": dpokit, "ratios_dpokit_over_trl": ratios,
                    "same_tokens_every_step": all(t == same_tokens[0] for t in same_tokens),
                    "wraps_epoch": min(trl["train_pairs"] or 0, dpokit["train_pairs"] or 0) < needed,
                    "max_loadavg_1m": max(loads), "max_other_cores": max(others),
                    "contended": max(loads) > CONTENDED_LOAD or max(others) > CONTENDED_CORES})
    return out


# whose versions each result records
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "dpokit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    parser.set_defaults(steps=6, limit=256)  # the limit bounds tokenization and precompute time; s/step ignores it
    parser.add_argument("--compare", nargs="+", default=None, metavar="TRL_MODE:DPOKIT_MODE",
                        help="TRL modes: default precompute lora; dpokit: default precomputed lean lora (default: "
                        f"{' '.join(PAIRS['random'])}; with --model smollm2: {' '.join(PAIRS['smollm2'])})")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating runs")
    parser.add_argument("--dpokit-set", nargs="*", default=[], metavar="KEY=VALUE", help="dpokit overrides (all runs)")
    parser.add_argument("--trl-set", nargs="*", default=[], metavar="KEY=VALUE", help="DPOConfig overrides")
    parser.add_argument("--no-parity", action="store_true", help="skip the loss-parity check")
    parser.add_argument("--python", default=sys.executable, help="interpreter for dpokit runs")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with trl==1.16.0 installed")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each run, wait up to this long for other processes to leave the CPU")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="profile dpokit's default mode: auto = when one of issue 10's targets is missed")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps profiled after the warm-up")
    parser.add_argument("--rerender", type=Path, default=None, metavar="JSON",
                        help="run nothing: recompute an earlier result's tables from its raw step times, in place")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default: results/compare_trl.json, or compare_trl_smollm2.json)")
    args = parser.parse_args(argv)
    args.compare = args.compare or PAIRS[args.model]
    args.out = args.out or RESULTS / ("compare_trl_smollm2.json" if args.model == "smollm2" else "compare_trl.json")
    return args


def rerender(path: Path) -> None:
    """An earlier result's comparisons, FLOP rows and targets recomputed from its runs' raw step times (so results
    from before a change of statistic read as new ones do); the runs, peaks, parity and profile are kept."""
    result = json.loads(path.read_text())
    args = parse_args(result["argv"])
    comps = comparisons(args, result["runs"])
    result["comparisons"] = comps
    if "matmul_peak" in result:  # results from before the FLOP accounting have none
        flop_rows = flops.accounting(result["runs"], comps, result["fixture"]["num_params"],
                                     result["matmul_peak"]["gflops"], args.warmup)
        result["targets"] = flops.verdicts(comps, flop_rows) if args.model == "smollm2" else []
        result["flops"]["rows"] = flop_rows
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(markdown(result))
    print("\n".join(summary_rows(result) + ([""] + flop_lines(result) if "flops" in result else [])))
    print(f"\nrewrote {path} and {path.with_suffix('.md')}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rerender:
        return rerender(args.rerender)
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()[0]
    fix = build_fixture(args.python, args.small, args.model)
    peaks = [matmul_peak(args, "peak-before")]
    runs = timing_runs(args)
    peaks.append(matmul_peak(args, "peak-after"))
    parity = None if args.no_parity else parity_runs(args, fix["ref_model"])
    comps = comparisons(args, runs)
    peak = max(p["peak_gflops"] for p in peaks)  # a competing job can only lower a measured peak
    flop_rows = flops.accounting(runs, comps, fix["num_params"], peak, args.warmup)
    targets = flops.verdicts(comps, flop_rows) if args.model == "smollm2" else []  # issue 10's, for this model
    missed = any(not t["met"] for t in targets)
    prof = profile(args) if args.profile == "always" or (args.profile == "auto" and missed) else None
    result = {
        "started": started, "argv": sys.argv[1:], "versions": versions(PACKAGES), "model": args.model, "fixture": fix,
        "loadavg_1m_before": load_before, "matmul_peak": {"gflops": peak, "runs": peaks},
        "flops": {"per_param_token": flops.FLOPS_PER_PARAM_TOKEN, "num_params": fix["num_params"],
                  "same_pair_tokens_every_step": flops.same_pair_tokens(runs), "rows": flop_rows},
        "targets": targets, "comparisons": comps, "parity": parity, "profile": prof, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    repo = str(BENCH_DIR.parent) + "/"  # committed results should not carry this machine's paths
    args.out.write_text(json.dumps(result, indent=2).replace(repo, ""))
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print("\n".join(summary_rows(result) + [""] + parity_rows(result) + [""] + flop_lines(result)))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
