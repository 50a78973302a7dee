"""dpokit's PPO vs TRL's experimental PPOTrainer, side by side in one run: seconds per PPO iteration (rollout +
update) and peak RSS, on the same tiny random Llama, prompts and reward model (ppo_fixture.py), CPU fp32.

    .venv/bin/python benchmarks/compare_trl_ppo.py --small --iterations 2      # development: about a minute
    .venv/bin/python benchmarks/compare_trl_ppo.py --iterations 6 --repeats 2 --trl-git /path/to/trl  # the table
    .venv/bin/python benchmarks/compare_trl_ppo.py --report benchmarks/results/compare_trl_ppo.json  # re-render

TRL 1.16 ships no PPO trainer (see run_ppo_trl.py). The driver first checks whether the TRL installed for
`--trl-python` has one and records the exact error if not; then the TRL side runs from `--trl-ppo-src DIR`, or from
the files it extracts from a TRL git clone with `--trl-git REPO --trl-ref REF` (into benchmarks/.cache/trl_ppo/REF,
never committed). With neither, only dpokit runs and the result says why TRL did not.

Runs alternate TRL, dpokit, TRL, dpokit, ... (`--repeats` rounds), each in a fresh process so peak RSS is that
system's alone. This driver imports only the standard library on purpose: a child's ru_maxrss starts from the
parent's peak when it execs. Results: benchmarks/results/compare_trl_ppo.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import versions
from ppo_measure import add_shared_args, forward_args

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
LOGS = BENCH_DIR / ".cache" / "logs_ppo"
CONTENDED_LOAD = (os.cpu_count() or 1) + 0.5  # the runner's own threads keep the load near the core count
PPO_FILES = ("__init__.py", "ppo_config.py", "ppo_trainer.py", "modeling_value_head.py")
PROBE = "import trl; from trl.experimental.ppo import PPOTrainer, PPOConfig"
COLUMNS = ("system", "s/iteration (median)", "generation s", "rest of rollout s", "update s", "peak RSS GiB",
           "setup s", "response tokens", "trained params")


def run_one(python: str, script: str, argv: list[str], tag: str) -> dict:
    """Runs a script in a fresh process; stderr goes to a log file, the last JSON result line is returned."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{tag}.log"
    cmd = [python, str(BENCH_DIR / script), *argv]
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{tag} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return json.loads(lines[-1])


def probe_trl(python: str) -> dict:
    """Does the installed TRL have a PPO trainer? The exact error if not."""
    proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, check=False,
                          env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"command": f"python -c {PROBE!r}", "ok": proc.returncode == 0,
            "error": None if proc.returncode == 0 else (errors[-1] if errors else f"exit {proc.returncode}")}


def extract_trl_ppo(repo: str, ref: str) -> dict:
    """`trl/experimental/ppo/*` at `ref` of a TRL clone -> .cache/trl_ppo/REF, with the commit and file hashes."""
    commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{ref}^{{commit}}"], capture_output=True, text=True,
                            check=True).stdout.strip()
    out = BENCH_DIR / ".cache" / "trl_ppo" / ref.replace("/", "_")
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name in PPO_FILES:
        blob = subprocess.run(["git", "-C", repo, "show", f"{commit}:trl/experimental/ppo/{name}"],
                              capture_output=True, check=True).stdout
        (out / name).write_bytes(blob)
        digests[name] = hashlib.sha256(blob).hexdigest()[:16]
    return {"src": str(out), "ref": ref, "commit": commit, "sha256_16": digests}


def build_fixture(python: str, small: bool) -> dict:
    cmd = [python, str(BENCH_DIR / "ppo_fixture.py")] + (["--small"] if small else [])
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def timing_runs(args: argparse.Namespace, trl_src: str | None) -> list[dict]:
    """TRL, dpokit, TRL, dpokit, ... Each result line is also appended to .cache/logs_ppo/runs.jsonl as it comes,
    so an interrupted comparison keeps its finished runs."""
    shared, runs = forward_args(args), []
    partial = LOGS / "runs.jsonl"
    partial.unlink(missing_ok=True)
    jobs = [("dpokit", args.python, "run_ppo_dpokit.py", [])]
    if args.run_trl:
        jobs.insert(0, ("trl", args.trl_python, "run_ppo_trl.py", ["--trl-ppo-src", trl_src] if trl_src else []))
    for round_ in range(1, args.repeats + 1):
        for system, python, script, extra in jobs:
            runs.append(run_one(python, script, [*shared, *extra], f"ppo-{system}-{round_}"))
            with partial.open("a") as f:
                f.write(json.dumps(runs[-1]) + "\n")
    return runs


def aggregate(runs: list[dict], system: str) -> dict | None:
    """Medians over repeats of each run's own medians (each run already left out its warm-up iterations)."""
    mine = [r for r in runs if r["system"] == system]
    if not mine:
        return None

    def med(key: str) -> float:
        return statistics.median(r[key] for r in mine)

    lengths = [x for r in mine for x in _measured(r["per_iteration"]["response_length"], r["warmup"])]
    cfg = mine[0]["config"]
    trained = cfg["num_params"] + (cfg.get("value_params") or 0)  # TRL trains a separate value model
    return {"system": system, "runs": len(mine), "median_s_per_iteration": med("median_s_per_iteration"),
            "median_generation_s": med("median_generation_s"), "median_update_s": med("median_update_s"),
            "median_rest_s": statistics.median(_rest(r) for r in mine),
            "per_round_s_per_iteration": [r["median_s_per_iteration"] for r in mine],
            "peak_rss_gib": med("peak_rss_gib"), "setup_s": med("setup_s"),
            "mean_response_tokens": statistics.mean(lengths) if lengths else None, "trained_params": trained,
            "max_loadavg_1m": max(r["loadavg_1m"] for r in mine)}


def _rest(run: dict) -> float:
    """Median over the measured iterations of iteration − update − generation: the rest of the rollout."""
    parts = zip(run["iteration_s"], run["update_s"], run["generation_s"], strict=True)
    return statistics.median(_measured([it - up - gen for it, up, gen in parts], run["warmup"]))


def _measured(values: list, warmup: int) -> list:
    """The iterations after the warm-up (all of them when there are no others), as ppo_measure's medians take."""
    return values[warmup:] if len(values) > warmup else values


def comparison(runs: list[dict]) -> dict:
    trl, dpokit = aggregate(runs, "trl"), aggregate(runs, "dpokit")
    ratios = None
    if trl and dpokit:
        ratios = {k: dpokit[k] / trl[k] for k in ("median_s_per_iteration", "median_generation_s",
                                                  "median_update_s", "peak_rss_gib")}
    loads = [r["loadavg_1m"] for r in runs]
    return {"trl": trl, "dpokit": dpokit, "ratios_dpokit_over_trl": ratios, "max_loadavg_1m": max(loads),
            "contended": max(loads) > CONTENDED_LOAD}


def table_rows(result: dict) -> list[list[str]]:
    comp, rows = result["comparison"], []
    for name, agg in (("TRL PPOTrainer", comp["trl"]), ("dpokit ppo", comp["dpokit"])):
        if agg is None:
            rows.append([name, "did not run", "", "", "", "", "", "", ""])
            continue
        rows.append([name, f"{agg['median_s_per_iteration']:.2f}", f"{agg['median_generation_s']:.2f}",
                     f"{agg['median_rest_s']:.2f}", f"{agg['median_update_s']:.2f}", f"{agg['peak_rss_gib']:.2f}",
                     f"{agg['setup_s']:.1f}", f"{agg['mean_response_tokens']:.1f}",
                     f"{agg['trained_params'] / 1e6:.1f}M"])
    ratio = comp["ratios_dpokit_over_trl"]
    if ratio:
        rows.append(["dpokit / TRL", f"**{ratio['median_s_per_iteration']:.2f}×**",
                     f"{ratio['median_generation_s']:.2f}×", "", f"{ratio['median_update_s']:.2f}×",
                     f"**{ratio['peak_rss_gib']:.2f}×**", "", "", ""])
    return rows


def notes(result: dict) -> list[str]:
    comp, trl = result["comparison"], result["trl"]
    lines = []
    if not trl["probe"]["ok"]:
        lines.append(f"TRL {result['versions']['trl']} has no PPO trainer: `{trl['probe']['command']}` -> "
                     f"`{trl['probe']['error']}`.")
    if trl.get("source"):
        src = trl["source"]
        lines.append(f"TRL side: `trl/experimental/ppo` of TRL {src.get('ref', '?')} (commit "
                     f"{src.get('commit', '?')[:12]}), loaded as `trl.experimental.ppo` on the installed TRL "
                     f"{result['versions']['trl']}.")
    elif not trl["ran"]:
        lines.append("TRL side not run: pass --trl-ppo-src DIR or --trl-git REPO --trl-ref REF.")
    if comp["ratios_dpokit_over_trl"]:
        speed = 1 / comp["ratios_dpokit_over_trl"]["median_s_per_iteration"]
        rounds = "; ".join(f"{name} {', '.join(f'{x:.2f}' for x in comp[key]['per_round_s_per_iteration'])}"
                           for name, key in (("TRL", "trl"), ("dpokit", "dpokit")))
        lines.append(f"dpokit runs {speed:.2f}× as many PPO iterations per second as TRL (ratios: dpokit / TRL, lower "
                     f"is better). Median s/iteration of each round: {rounds}.")
    if comp["contended"]:
        lines.append(f"note: the 1-min load average reached {comp['max_loadavg_1m']:.1f} (> {CONTENDED_LOAD:.1f}): "
                     "other jobs competed for the CPU; rerun before quoting.")
    return lines


def setup_line(result: dict) -> str:
    fix, s = result["fixture"], result["settings"]
    threads = sorted({r["config"]["torch_threads"] for r in result["runs"]})
    return (f"Llama {fix['num_params'] / 1e6:.1f}M parameters (random init), BPE vocab 8192; reward model: a random "
            f"Llama classifier of the same shape ({fix['reward_params'] / 1e6:.1f}M); prompts {fix['prompt_tokens']} "
            f"tokens; rollout {s['rollout_batch_size']}, minibatch {s['minibatch_size']}, {s['ppo_epochs']} PPO "
            f"epochs, ≤ {s['max_new_tokens']} new tokens (stop at eos), lr {s['lr']}, β {s['kl_coef']}, ε "
            f"{s['clip_range']}, ε_v {s['value_clip_range']}, vf_coef {s['vf_coef']}, γ {s['gamma']}, λ "
            f"{s['lam']}; {s['iterations']} iterations, the first {s['warmup']} excluded; fp32 CPU, "
            f"{'/'.join(map(str, threads))} torch threads; {s['repeats']} round(s).")


def markdown(result: dict) -> str:
    lines = [setup_line(result), "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    lines += ["", *notes(result)] if notes(result) else []
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    loads = f"1-min load average {result['loadavg_1m_before']:.2f} before, {result['loadavg_1m_after']:.2f} after"
    lines += ["", f"{versions}; run {result['started']}; {loads}.", "",
              f"Rerun: `.venv/bin/python benchmarks/compare_trl_ppo.py {' '.join(result['argv'])}`", ""]
    return "\n".join(lines)


def aligned(result: dict) -> list[str]:
    rows = [list(COLUMNS)] + [[c.replace("**", "") for c in r] for r in table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]


# whose versions each result records
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "trl", "dpokit")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of alternating runs")
    parser.add_argument("--trl-ppo-src", default=None, help="directory with trl/experimental/ppo's four files")
    parser.add_argument("--trl-git", default=None, help="a TRL git clone to extract trl/experimental/ppo from")
    parser.add_argument("--trl-ref", default="v1.9.0", help="the TRL tag or commit to extract it at")
    parser.add_argument("--python", default=sys.executable, help="interpreter for dpokit runs")
    parser.add_argument("--trl-python", default=sys.executable, help="interpreter with TRL installed")
    parser.add_argument("--out", type=Path, default=RESULTS / "compare_trl_ppo.json")
    parser.add_argument("--report", type=Path, default=None,
                        help="only re-render the tables of this result JSON (from its runs) into --out's .md")
    return parser.parse_args(argv)


def _portable(text: str, args: argparse.Namespace) -> str:
    """Committed results should not carry this machine's paths."""
    text = text.replace(str(BENCH_DIR.parent) + "/", "")
    return text.replace(args.trl_git, "/path/to/trl") if args.trl_git else text


def rerender(args: argparse.Namespace) -> None:
    """Recomputes the comparison from a saved result's runs and rewrites the Markdown beside --out."""
    result = json.loads(args.report.read_text())
    result["comparison"] = comparison(result["runs"])
    args.out.write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print("\n".join([setup_line(result), *aligned(result), *notes(result)]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        return rerender(args)
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()[0]
    fix = build_fixture(args.python, args.small)
    trl = {"probe": probe_trl(args.trl_python), "source": None}
    src = args.trl_ppo_src
    if not trl["probe"]["ok"] and not src and args.trl_git:
        trl["source"] = extract_trl_ppo(args.trl_git, args.trl_ref)
        src = trl["source"]["src"]
    elif src:
        trl["source"] = {"src": src}
    args.run_trl = trl["ran"] = trl["probe"]["ok"] or bool(src)
    runs = timing_runs(args, src)
    settings = {k: v for k, v in vars(args).items() if k not in ("python", "trl_python", "out", "trl_git")}
    result = {"started": started, "argv": sys.argv[1:], "versions": versions(PACKAGES), "fixture": fix, "trl": trl,
              "settings": settings, "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
              "comparison": comparison(runs), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_portable(json.dumps(result, indent=2, default=str), args))
    args.out.with_suffix(".md").write_text(_portable(markdown(result), args))
    print("\n".join([setup_line(result), *aligned(result), *notes(result)]))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
