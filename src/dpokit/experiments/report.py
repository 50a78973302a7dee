"""What a frontier run leaves behind: figures, a Markdown report, raw numbers as JSON/CSV, and a console table.

The report states what the runs show, including when the first family (DPO, in the paper's set) does *not* dominate:
each other family's points are checked against the first family's points (is there one with no more KL and at least
as much reward?), with standard errors, so "above the frontier" by less than the noise is called that.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from dpokit.experiments.frontier import EvalPoint, FrontierResult, RunResult

FILES = ("frontier.png", "curves.png", "report.md", "results.json", "points.csv", "final.csv", "samples.json")


@dataclass
class Comparison:
    """Family `other` against the `primary` family's points.

    Attributes:
        dominated: other's points with some primary point at <= KL and >= reward.
        above: other's points with no such primary point.
        clearly_above: of those, the ones more than 2 standard errors above the best primary reward at <= their KL.
        example: the most-above point, described, or "".
    """

    primary: str
    other: str
    points: int
    dominated: int
    above: int
    clearly_above: int
    example: str


def all_points(result: FrontierResult) -> list[EvalPoint]:
    """Every evaluation, πref's step-0 point first (label "πref (SFT)")."""
    ref = result.reference
    start = EvalPoint("πref (SFT)", "", "reference", 0, ref.reward, ref.reward_se, ref.kl, ref.kl_se, ref.mean_tokens)
    return [start] + [p for run in result.runs for p in run.points]


def compare_families(result: FrontierResult) -> list[Comparison]:
    """Each family after the first, against the first family (module docstring)."""
    labels = list(dict.fromkeys(run.method.label for run in result.runs))
    if len(labels) < 2:
        return []
    primary = [p for run in result.runs if run.method.label == labels[0] for p in run.points]
    primary.append(all_points(result)[0])  # every family starts at πref
    return [_compare(labels[0], label, primary, [p for run in result.runs if run.method.label == label
                                                 for p in run.points]) for label in labels[1:]]


def _compare(primary_label: str, label: str, primary: list[EvalPoint], others: list[EvalPoint]) -> Comparison:
    dominated = above = clearly = 0
    best_margin, example = 0.0, ""
    for point in others:
        rival = max((p for p in primary if p.kl <= point.kl), key=lambda p: p.reward, default=None)
        if rival is not None and rival.reward >= point.reward:
            dominated += 1
            continue
        above += 1
        margin = point.reward - (rival.reward if rival else -math.inf)
        noise = 2 * math.hypot(point.reward_se, rival.reward_se) if rival else 0.0
        clearly += margin > noise
        if margin > best_margin:
            best_margin = margin
            vs = f"{primary_label}'s best at KL <= {point.kl:.2f} is {rival.reward:+.3f} ({rival.setting}, step " \
                 f"{rival.step})" if rival else f"{primary_label} has no point at that KL"
            when = f" at step {point.step}" if point.step else ""  # Best-of-N has no steps
            example = f"{point.setting or label}{when}: reward {point.reward:+.3f} ± {point.reward_se:.3f} at KL " \
                      f"{point.kl:.2f}; {vs}"
    return Comparison(primary_label, label, len(others), dominated, above, clearly, example)


def verdict(comparisons: list[Comparison]) -> list[str]:
    """One plain sentence per comparison."""
    lines = []
    for c in comparisons:
        if c.above == 0:
            lines.append(f"{c.primary}'s frontier dominates {c.other}: each of its {c.points} points has a "
                         f"{c.primary} point with no more KL and at least as much reward.")
            continue
        strength = (f"{c.clearly_above} by more than 2 standard errors" if c.clearly_above
                    else "none by more than 2 standard errors (within noise)")
        lines.append(f"{c.primary}'s frontier does NOT dominate {c.other}: {c.above} of its {c.points} points lie "
                     f"above {c.primary}'s, {strength}. Most above: {c.example}.")
    return lines


def kl_budgets(points: list[EvalPoint]) -> list[float]:
    """A doubling grid of KL budgets spanning the points, for the best-reward-within-budget table."""
    top = max((p.kl for p in points), default=0.0)
    budgets, b = [], 0.25
    while b < top * 2 and len(budgets) < 10:
        budgets.append(b)
        b *= 2
    return budgets or [1.0]


def best_within(result: FrontierResult, budgets: list[float]) -> dict[str, list[float | None]]:
    """Family label -> best mean reward among its points (and πref's) with KL <= each budget."""
    start = all_points(result)[0]
    table: dict[str, list[float | None]] = {}
    for label in dict.fromkeys(run.method.label for run in result.runs):
        points = [start] + [p for run in result.runs if run.method.label == label for p in run.points]
        table[label] = [max((p.reward for p in points if p.kl <= b), default=None) for b in budgets]
    return table


def headline(result: FrontierResult) -> list[dict[str, object]]:
    """One row per run: its final evaluation (steps: optimizer steps, PPO iterations, 0 for Best-of-N)."""
    rows = []
    ref = result.reference
    rows.append({"method": "πref (SFT)", "setting": "", "kind": "", "steps": 0, "reward": ref.reward,
                 "reward_se": ref.reward_se, "kl": ref.kl, "kl_se": ref.kl_se, "mean_tokens": ref.mean_tokens})
    for run in result.runs:
        final = run.points[-1]
        rows.append({"method": run.method.label, "setting": run.method.setting, "kind": run.method.kind,
                     "steps": run.steps,
                     "reward": final.reward, "reward_se": final.reward_se, "kl": final.kl, "kl_se": final.kl_se,
                     "mean_tokens": final.mean_tokens})
    return rows


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
    from dpokit.experiments.plots import plot_curves, plot_frontier
    from dpokit.experiments.report_markdown import markdown_report

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


def _results(result: FrontierResult, comparisons: list[Comparison], budgets: list[float]) -> dict[str, object]:
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
            "run_dir": run.run_dir, "steps": run.steps, "seconds": run.seconds,
            "points": [asdict(p) for p in run.points]}
