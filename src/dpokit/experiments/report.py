"""What a frontier run leaves behind: figures, a Markdown report, raw numbers as JSON/CSV, and a console table.

The report states what the runs show, including when the first family (DPO, in the paper's set) does *not* dominate:
each other family's points are checked against the first family's points (is there one with no more KL and at least
as much reward?), with standard errors, so "above the frontier" by less than the noise is called that.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

from dpokit.experiments.frontier import EvalPoint, FrontierResult, RunResult
from dpokit.experiments.frontier_analysis import (
    FrontierComparison,
    all_points,
    best_within,
    compare_families,
    headline,
    kl_budgets,
    verdict,
)
from dpokit.experiments.plots import plot_curves, plot_frontier
from dpokit.experiments.report_markdown import markdown_report

FILES = ("frontier.png", "curves.png", "report.md", "results.json", "points.csv", "final.csv", "samples.json")


def format_table(rows: list[dict[str, object]]) -> str:
    """The headline as aligned plain text, for the console."""
    head = f"{'method':<16}{'setting':<10}{'steps':>6}{'reward':>16}{'KL (nats)':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:<16}{r['setting']:<10}{r['steps']:>6}{r['reward']:>+9.3f} ± {r['reward_se']:.3f}"
                     f"{r['kl']:>9.2f} ± {r['kl_se']:.2f}")
    return "\n".join(lines)


def console_summary(result: FrontierResult, paths: dict[str, Path]) -> str:
    """The headline table, the verdict and where the files are: what a command prints when it finishes."""
    lines = ["", format_table(headline(result)), ""]
    lines += verdict(compare_families(result))
    lines.append(f"\nfinished in {result.seconds / 60:.1f} min. Report and figures:")
    lines += [f"  {name:<13} {paths[name]}" for name in FILES]
    return "\n".join(lines)


def write_outputs(result: FrontierResult, out_dir: Path, task: str, examples: int = 4) -> dict[str, Path]:
    """Writes every file in `FILES` under `out_dir` and returns their paths by name."""

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in FILES}
    plot_frontier(result, paths["frontier.png"])
    plot_curves(result, paths["curves.png"])
    comparisons = compare_families(result)
    budgets = kl_budgets(all_points(result))
    _write_points_csv(all_points(result), paths["points.csv"])
    _write_rows_csv(headline(result), paths["final.csv"])
    paths["samples.json"].write_text(json.dumps(_samples(result), indent=1, ensure_ascii=False))
    paths["results.json"].write_text(json.dumps(_results(result, comparisons, budgets), indent=1, ensure_ascii=False))
    paths["report.md"].write_text(markdown_report(result, task, comparisons, budgets, examples))
    return paths


def _write_points_csv(points: list[EvalPoint], path: Path) -> None:
    _write_rows_csv([asdict(p) for p in points], path)


def _write_rows_csv(rows: list[dict[str, object]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_samples(name: str, run_eval) -> dict[str, object]:
    s = run_eval.samples
    return {"run": name, "completions": [
        {"prompt": p, "completion": c, "reward": r, "kl": k}
        for p, c, r, k in zip(s.prompts, s.completions, run_eval.rewards, run_eval.kls, strict=True)]}


def _samples(result: FrontierResult) -> list[dict[str, object]]:
    """Every held-out completion of πref and of each run's final evaluation, with its reward and KL."""
    return [_run_samples("πref (SFT)", result.reference)] + [
        _run_samples(f"{run.method.label} {run.method.setting}".strip(), run.final) for run in result.runs]


def _results(result: FrontierResult, comparisons: list[FrontierComparison], budgets: list[float]) -> dict[str, object]:
    cfg = result.config
    return {
        "reward": result.reward_name,
        "model": cfg.model,
        "seconds": result.seconds,
        "prompts": {"train": len(cfg.train_prompts), "eval": len(cfg.eval_prompts)},
        "settings": {"samples_per_prompt": cfg.samples_per_prompt, "eval_samples_per_prompt":
                     cfg.eval_samples_per_prompt, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
                     "run": cfg.run, "rm": cfg.rm, "ppo": cfg.ppo, "ppo_eval_every": cfg.ppo_eval_every},
        "preferences": result.preferences.as_dict(),
        "reward_model": asdict(result.reward_model) if result.reward_model else None,
        "reference": result.reference.summary(),
        "runs": [_run_record(run) for run in result.runs],
        "best_reward_within_kl": {"budgets": budgets, "families": best_within(result, budgets)},
        "comparisons": [asdict(c) for c in comparisons],
        "verdict": verdict(comparisons),
    }


def _run_record(run: RunResult) -> dict[str, object]:
    return {"label": run.method.label, "setting": run.method.setting, "kind": run.method.kind,
            "loss": run.method.loss, "reward": run.method.reward, "n": run.method.n,
            "run_dir": run.run_dir, "steps": run.steps, "seconds": run.seconds, "label_calls": run.label_calls,
            "points": [asdict(p) for p in run.points]}
