"""What `dpokit winrate` writes: winrate.json, comparisons.jsonl, winrate.png (win rate vs temperature, the DPO
paper's Fig. 2 right / Fig. 3) and winrate.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from dpokit.core.sections import Tracking
from dpokit.eval.winrate import Cell, WinrateResult  # noqa: E402
from dpokit.trainer.trackers import open_trackers

STYLES = ("-", "--", ":", "-.")


def write_outputs(result: WinrateResult, out_dir: Path, note: str = "") -> dict[str, Path]:
    """Writes the four files into `out_dir`; returns their paths by name.

    Args:
        note: a paragraph for the report's top (e.g. what the judge is and is not).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in ("winrate.json", "comparisons.jsonl", "winrate.png", "winrate.md")}
    summary = {"judge": result.judge, "results": [c.row() for c in result.cells],
               "agreement": result.agreement.row() if result.agreement else None, "settings": result.settings}
    paths["winrate.json"].write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    with paths["comparisons.jsonl"].open("w") as f:
        for judged in result.comparisons:
            f.write(json.dumps(judged.row(), ensure_ascii=False) + "\n")
    plot_winrates(result, paths["winrate.png"])
    paths["winrate.md"].write_text(markdown(result, note))
    return paths


def plot_winrates(result: WinrateResult, path: Path) -> None:
    """Win rate vs sampling temperature: a line per model (colour) and prompt set (line style), 95% intervals shaded;
    the 50% line is a tie with the baseline."""
    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("tab10")
    models = list(dict.fromkeys(c.model for c in result.cells))
    sets = list(dict.fromkeys(c.prompt_set for c in result.cells))
    for cell_group in _groups(result.cells):
        first = cell_group[0]
        color = cmap(models.index(first.model) % 10)
        style = STYLES[sets.index(first.prompt_set) % len(STYLES)]
        temps = [c.temperature for c in cell_group]
        label = first.model if len(sets) == 1 else f"{first.model} · {first.prompt_set}"
        ax.plot(temps, [c.rate.rate for c in cell_group], style, marker="o", color=color, label=label)
        ax.fill_between(temps, [c.rate.low for c in cell_group], [c.rate.high for c in cell_group], color=color,
                        alpha=0.12)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 1)
    ax.set_xlabel("sampling temperature")
    ax.set_ylabel("win rate vs baseline (ties ½)")
    ax.set_title(f"Win rate vs temperature — judge: {result.judge}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _groups(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by (model, prompt set), each sorted by temperature."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.prompt_set), []).append(cell)
    return [sorted(g, key=lambda c: c.temperature) for g in groups.values()]


def table(result: WinrateResult) -> str:
    """The results as a Markdown table, one row per model, prompt set and temperature."""
    biased = any(c.position_bias is not None for c in result.cells)
    head = "| model | prompt set | T | win rate | 95% CI | ties | n | unparsed |"
    head += " position bias |" if biased else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for group in _groups(result.cells):
        for c in group:
            r = c.rate
            row = (f"| {c.model} | {c.prompt_set} | {c.temperature:g} | {r.rate:.3f} ± {r.se:.3f} | "
                   f"[{r.low:.3f}, {r.high:.3f}] | {r.ties} | {r.n} | {c.unparsed} |")
            if biased:
                row += " – |" if c.position_bias is None else f" {c.position_bias:.1%} |"
            lines.append(row)
    return "\n".join(lines)


def agreement_line(result: WinrateResult) -> str:
    a = result.agreement
    if a is None:
        return "Judge agreement with human labels: not measured (give `--agreement FILE`)."
    extra = "" if a.position_bias is None else f"; position bias {a.position_bias:.1%}"
    return (f"Judge agreement with the human labels of `{a.source}`: **{a.rate.rate:.3f}** (95% CI [{a.rate.low:.3f}, "
            f"{a.rate.high:.3f}], n = {a.rate.n}, ties {a.rate.ties}, unparsed {a.unparsed}{extra}).")


def markdown(result: WinrateResult, note: str = "") -> str:
    settings = result.settings
    lines = ["# Win rates", ""]
    if note:
        lines += [note, ""]
    lines += [f"Judge: `{result.judge}`. Baseline: `{settings['baseline']}`. Samples per prompt: "
              f"{settings['num_samples']} (1 at T = 0), max {settings['max_new_tokens']} new tokens, seed "
              f"{settings['seed']}. Win rate = mean score (win 1, tie ½, loss 0) ± standard error; 95% CI: Wilson.",
              "", agreement_line(result), "", table(result), "", "![win rate vs temperature](winrate.png)", ""]
    return "\n".join(lines)


def console_summary(result: WinrateResult, paths: dict[str, Path]) -> str:
    where = ", ".join(str(p) for p in paths.values())
    return f"{agreement_line(result)}\n\n{table(result)}\n\nwritten: {where}"


def log_to_trackers(result: WinrateResult, cfg: Any) -> None:
    """Each win rate to the trackers `cfg.report_to` names, as `win_rate/<model>/<prompt set>` at step
    round(100 x temperature), and the agreement as `judge/agreement` at step 0; the settings as hyper-parameters."""

    trackers = open_trackers(Tracking.of(cfg), cfg.output_dir, result.settings)
    try:
        if result.agreement is not None:
            trackers.log({"judge/agreement": result.agreement.rate.rate}, step=0)
        for cell in result.cells:
            trackers.log({f"win_rate/{cell.model}/{cell.prompt_set}": cell.rate.rate,
                          f"win_rate_se/{cell.model}/{cell.prompt_set}": cell.rate.se},
                         step=round(100 * cell.temperature))
    finally:
        trackers.finish()
