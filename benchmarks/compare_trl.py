"""TRL 1.16 vs dpokit, side by side in one run: same fixture, batch, max_length, β, lr, optimizer; CPU fp32.

    .venv/bin/python benchmarks/compare_trl.py --small --steps 3 --limit 64  # development: a few minutes
    .venv/bin/python benchmarks/compare_trl.py --steps 6 --limit 128        # the README table

Each `--compare TRL_MODE:DPOKIT_MODE` is one row pair of the table; runs alternate TRL, dpokit, TRL, dpokit, ...
(`--repeats` rounds), each in a fresh process so peak RSS is that system's alone. Then a loss-parity check: both
systems compute the first batch's loss with a *different* random model as reference (policy == reference would make
every loss exactly ln 2), and the driver reports |Δ| of the loss and of the summed log-probs.

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
from importlib import metadata
from pathlib import Path

from measure import add_shared_args, forward_args
from report import markdown, parity_rows, summary_rows

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
LOGS = BENCH_DIR / ".cache" / "logs"
PARITY_TOLERANCE = 1e-4
# The runner's own threads keep the load near the core count; a competing job pushes it past this.
CONTENDED_LOAD = (os.cpu_count() or 1) + 0.5


def run_one(python: str, script: str, argv: list[str], tag: str) -> dict:
    """Runs a runner in a fresh process; its stderr goes to a log file, its last JSON result line is returned."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{tag}.log"
    cmd = [python, str(BENCH_DIR / script), *argv]
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False)
    results = [line for line in proc.stdout.splitlines() if line.startswith('{"system"')]
    if proc.returncode != 0 or not results:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(results[-1])


def build_fixture(python: str, small: bool) -> dict:
    cmd = [python, str(BENCH_DIR / "fixture.py")] + (["--small"] if small else [])
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
            runs.append(run_one(args.trl_python, "run_trl.py", trl_argv, f"trl-{trl_mode}-{round_}"))
            runs.append(run_one(args.python, "run_dpokit.py", dpokit_argv, f"dpokit-{dpokit_mode}-{round_}"))
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


def aggregate(runs: list[dict], system: str, mode: str) -> dict:
    """Medians over repeats of each run's own statistics (each run already dropped its warm-up steps)."""
    mine = [r for r in runs if r["system"] == system and r["mode"] == mode]
    median_step = statistics.median(r["median_s_per_step"] for r in mine)
    return {
        "system": system, "mode": mode, "runs": len(mine), "median_s_per_step": median_step,
        "pairs_per_s": mine[0]["batch_size"] / median_step,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
        "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in mine),
        "setup_s": statistics.median(r["setup_s"] for r in mine),
        "first_batch_loss": mine[0]["first_batch"].get("loss"),
        "train_pairs": mine[0]["config"].get("train_pairs"),
    }


def comparisons(args: argparse.Namespace, runs: list[dict]) -> list[dict]:
    """Per TRL_MODE:DPOKIT_MODE pair: both aggregates, the ratios, and the checks that give the ratios meaning."""
    out = []
    for pair in args.compare:
        trl_mode, dpokit_mode = pair.split(":")
        trl, dpokit = aggregate(runs, "trl", trl_mode), aggregate(runs, "dpokit", dpokit_mode)
        ratios = {
            "pairs_per_s": dpokit["pairs_per_s"] / trl["pairs_per_s"],
            "tokens_per_s": dpokit["tokens_per_s"] / trl["tokens_per_s"],
            "peak_rss_gib": dpokit["peak_rss_gib"] / trl["peak_rss_gib"],
            "median_s_per_step": dpokit["median_s_per_step"] / trl["median_s_per_step"],
        }
        mine = [("trl", trl_mode), ("dpokit", dpokit_mode)]
        same_tokens = [r["step_tokens"] for r in runs if (r["system"], r["mode"]) in mine]
        needed = args.steps * args.batch_size  # more than the data holds: the systems wrap epochs differently
        loads = [r["loadavg_1m"] for r in runs if (r["system"], r["mode"]) in mine]
        out.append({"trl": trl, "dpokit": dpokit, "ratios_dpokit_over_trl": ratios,
                    "same_tokens_every_step": all(t == same_tokens[0] for t in same_tokens),
                    "wraps_epoch": min(trl["train_pairs"] or 0, dpokit["train_pairs"] or 0) < needed,
                    "max_loadavg_1m": max(loads), "contended": max(loads) > CONTENDED_LOAD})
    return out


def versions() -> dict[str, str]:
    names = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "dpokit")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    parser.set_defaults(steps=6, limit=256)  # the limit bounds tokenization and precompute time; s/step ignores it
    pairs = ["default:default", "precompute:precomputed", "precompute:lean"]
    parser.add_argument("--compare", nargs="+", default=pairs,
                        metavar="TRL_MODE:DPOKIT_MODE", help="TRL modes: default precompute lora; dpokit: default "
                        "precomputed lean lora")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating runs")
    parser.add_argument("--dpokit-set", nargs="*", default=[], metavar="KEY=VALUE", help="dpokit overrides (all runs)")
    parser.add_argument("--trl-set", nargs="*", default=[], metavar="KEY=VALUE", help="DPOConfig overrides")
    parser.add_argument("--no-parity", action="store_true", help="skip the loss-parity check")
    parser.add_argument("--python", default=sys.executable, help="interpreter for dpokit runs")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with trl==1.16.0 installed")
    parser.add_argument("--out", type=Path, default=RESULTS / "compare_trl.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    fix = build_fixture(args.python, args.small)
    runs = timing_runs(args)
    parity = None if args.no_parity else parity_runs(args, fix["ref_model"])
    result = {
        "started": started, "argv": sys.argv[1:], "versions": versions(), "fixture": fix,
        "comparisons": comparisons(args, runs), "parity": parity, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    repo = str(BENCH_DIR.parent) + "/"  # committed results should not carry this machine's paths
    args.out.write_text(json.dumps(result, indent=2).replace(repo, ""))
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print("\n".join(summary_rows(result) + [""] + parity_rows(result)))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
