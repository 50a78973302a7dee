"""The frontier and training-curve figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dpokit.eval.frontier import FrontierResult, RunResult  # noqa: E402

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
    """Reward vs KL(π‖πref), one series per run, every evaluation a point (the paper's Fig. 2, left)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = family_colors(result)
    ref = result.reference
    for run in result.runs:
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


def plot_curves(result: FrontierResult, path: Path) -> None:
    """Held-out reward, KL, and training loss against the training step, for every run."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = family_colors(result)
    ref = result.reference
    for run in result.runs:
        style = _style(result, run, colors)
        steps = [0] + [p.step for p in run.points]
        axes[0].plot(steps, [ref.reward] + [p.reward for p in run.points], marker=style["marker"], markersize=3,
                     color=style["color"], label=style["label"])
        axes[1].plot(steps, [ref.kl] + [p.kl for p in run.points], marker=style["marker"], markersize=3,
                     color=style["color"])
        loss_steps, losses = train_losses(Path(run.run_dir) / "metrics.jsonl")
        axes[2].plot(loss_steps, losses, color=style["color"], linewidth=1)
    for ax, title in zip(axes, ("held-out reward", "KL(π ‖ πref)", "training loss (each method's own)"),
                         strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_losses(metrics_path: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of the "train" lines of a run's metrics.jsonl."""
    steps, losses = [], []
    if not metrics_path.is_file():
        return steps, losses
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and record.get("loss") is not None:
            steps.append(record["step"])
            losses.append(record["loss"])
    return steps, losses
