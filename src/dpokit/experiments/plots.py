"""The frontier and training-curve figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dpokit.experiments.frontier import FrontierResult, RunResult  # noqa: E402
from dpokit.experiments.frontier_config import KINDS  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def family_colors(result: FrontierResult) -> dict[str, tuple]:
    """One colour per method family (label), in the order the families first run."""
    labels = list(dict.fromkeys(run.method.label for run in result.runs))
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _style(result: FrontierResult, run: RunResult, colors: dict[str, tuple]) -> dict:
    """Same colour within a family; a different marker and shade for each of its settings."""
    family = [r for r in result.runs if r.method.label == run.method.label]
    index = family.index(run)
    shade = 0.45 + 0.55 * (index + 1) / len(family)
    base = colors[run.method.label]
    color = tuple(c * shade + (1 - shade) * 0.15 for c in base[:3])
    name = f"{run.method.label} {run.method.setting}".strip()
    return {"color": color, "marker": MARKERS[index % len(MARKERS)], "label": name}


def plot_frontier(result: FrontierResult, path: Path) -> None:
    """Reward vs KL(π‖πref), one series per run, every evaluation a point (the paper's Fig. 2, left). A method
    without training (Best-of-N) has one point per setting: its family is one dashed line over N, diamonds."""
    fig, ax = plt.subplots(figsize=(9, 6))
    colors = family_colors(result)
    ref = result.reference
    _plot_untrained(result, ax, colors)
    for run in result.runs:
        if not KINDS[run.method.kind].trains:
            continue
        style = _style(result, run, colors)
        kls = [ref.kl] + [p.kl for p in run.points]
        rewards = [ref.reward] + [p.reward for p in run.points]
        ax.plot(kls, rewards, "-", color=style["color"], alpha=0.35, linewidth=1)
        ax.scatter(kls[1:], rewards[1:], s=28, color=style["color"], marker=style["marker"], label=style["label"],
                   edgecolors="white", linewidths=0.4, zorder=3)
    ax.scatter([ref.kl], [ref.reward], s=140, marker="*", color="black", label="πref (SFT)", zorder=4)
    ax.set_xlabel("KL(π ‖ πref), nats per completion")
    ax.set_ylabel(f"mean reward: {result.reward_name}")
    ax.set_title("Reward–KL frontier (each point: one evaluation during training)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_untrained(result: FrontierResult, ax, colors: dict[str, tuple]) -> None:
    """Each untrained family (Best-of-N) as one dashed line from πref through its points in KL order, labelled."""
    ref = result.reference
    families = dict.fromkeys(r.method.label for r in result.runs if not KINDS[r.method.kind].trains)
    for label in families:
        points = sorted((p for r in result.runs if r.method.label == label for p in r.points), key=lambda p: p.kl)
        ax.plot([ref.kl] + [p.kl for p in points], [ref.reward] + [p.reward for p in points], "--",
                color=colors[label], linewidth=1.2, alpha=0.8)
        ax.scatter([p.kl for p in points], [p.reward for p in points], s=55, marker="D", color=colors[label],
                   edgecolors="black", linewidths=0.6, zorder=4, label=f"{label} (analytic KL)")
        for p in points:
            ax.annotate(p.setting, (p.kl, p.reward), textcoords="offset points", xytext=(5, -10), fontsize=7)


def plot_curves(result: FrontierResult, path: Path) -> None:
    """Held-out reward, KL, and training loss against the training step (PPO: iteration), for every run that trains;
    Best-of-N has no training and no curve (the figure says so)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = family_colors(result)
    ref = result.reference
    untrained = sorted({r.method.label for r in result.runs if not KINDS[r.method.kind].trains})
    for run in result.runs:
        if not KINDS[run.method.kind].trains:
            continue
        style = _style(result, run, colors)
        steps = [0] + [p.step for p in run.points]
        axes[0].plot(steps, [ref.reward] + [p.reward for p in run.points], marker=style["marker"], markersize=3,
                     color=style["color"], label=style["label"])
        axes[1].plot(steps, [ref.kl] + [p.kl for p in run.points], marker=style["marker"], markersize=3,
                     color=style["color"])
        loss_steps, losses = train_losses(Path(run.run_dir) / "metrics.jsonl")
        axes[2].plot(loss_steps, losses, color=style["color"], linewidth=1)
    for ax, title in zip(axes, ("held-out reward", "KL(π ‖ πref)", "training loss (each method's own; PPO: policy)"),
                         strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step (PPO: iteration)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    if untrained:
        fig.text(0.01, 0.01, f"{', '.join(untrained)}: no training, so no curve (see the frontier)", fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if untrained else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_losses(metrics_path: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of the "train" lines of a run's metrics.jsonl, or (iterations, policy losses) of a PPO run's
    iteration lines."""
    steps, losses = [], []
    if not metrics_path.is_file():
        return steps, losses
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and record.get("loss") is not None:
            steps.append(record["step"])
            losses.append(record["loss"])
        elif "split" not in record and record.get("policy_loss") is not None:
            steps.append(record["iteration"])
            losses.append(record["policy_loss"])
    return steps, losses
