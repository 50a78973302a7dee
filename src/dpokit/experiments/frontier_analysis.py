"""What a frontier's points show: each other family's points against the first family's (is there a first-family
point with no more KL and at least as much reward?), with standard errors, so "above the frontier" by less than the
noise is called that; the best reward within KL budgets; the headline rows. report.py and report_markdown.py write
these out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dpokit.experiments.frontier import EvalPoint, FrontierResult


@dataclass
class FrontierComparison:
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


def compare_families(result: FrontierResult) -> list[FrontierComparison]:
    """Each family after the first, against the first family (module docstring)."""
    labels = list(dict.fromkeys(run.method.label for run in result.runs))
    if len(labels) < 2:
        return []
    primary = [p for run in result.runs if run.method.label == labels[0] for p in run.points]
    primary.append(all_points(result)[0])  # every family starts at πref
    return [_compare(labels[0], label, primary, [p for run in result.runs if run.method.label == label
                                                 for p in run.points]) for label in labels[1:]]


def _compare(primary_label: str, label: str, primary: list[EvalPoint], others: list[EvalPoint]) -> FrontierComparison:
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
    return FrontierComparison(primary_label, label, len(others), dominated, above, clearly, example)


def verdict(comparisons: list[FrontierComparison]) -> list[str]:
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
