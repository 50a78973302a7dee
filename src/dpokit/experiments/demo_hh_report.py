"""The HH demo's report: hh_report.md (tables), hh_results.json (every figure), and the win-rate files."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from dpokit.eval.winrate import WinrateResult
from dpokit.eval.winrate_report import agreement_line, write_outputs

PROXY = ("**The judge is a proxy.** The paper's judge is GPT-4; here, offline, it is a reward model that `dpokit rm` "
         "trained from SmolLM2-135M-Instruct on a split of the HH pairs that no policy trains on. It is a small model "
         "learning from few pairs: its agreement with the held-out human labels (below) says how far to trust it. "
         "Set an LLM judge (`--judge openai:MODEL` with OPENAI_BASE_URL / OPENAI_API_KEY) to judge as the paper does.")


def winrate_table(result: WinrateResult) -> str:
    """Methods as rows, temperatures as columns: win rate ± standard error vs the chosen responses."""
    temps = sorted({c.temperature for c in result.cells})
    methods = list(dict.fromkeys(c.model for c in result.cells))
    lines = ["| method | " + " | ".join(f"T = {t:g}" for t in temps) + " |", "|---|" + "---|" * len(temps)]
    for method in methods:
        cells = {c.temperature: c for c in result.cells if c.model == method}
        values = [f"{cells[t].rate.rate:.2f} ± {cells[t].rate.se:.2f}" if t in cells else "–" for t in temps]
        lines.append(f"| {method} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def capability_table(summary: dict[str, Any]) -> str:
    """Implicit-reward accuracy and perplexity per model, before (πref) and after."""
    lines = ["| model | held-out implicit-reward accuracy | margin | perplexity (NLL/token) |", "|---|---|---|---|"]
    for name, acc in summary["accuracy"].items():
        ppl = summary["perplexity"][name]
        lines.append(f"| {name} | {acc['accuracy']:.3f} | {acc['margin']:+.3f} | {ppl['perplexity']:.2f} "
                     f"({ppl['nll']:.3f}) |")
    return "\n".join(lines)


def stage_table(summary: dict[str, Any]) -> str:
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {s.name} | {s.seconds:.0f} |" for s in summary["stages"]]
    lines.append(f"| **total** | **{summary['seconds']:.0f}** |")
    return "\n".join(lines)


def markdown(result: WinrateResult, summary: dict[str, Any]) -> str:
    s, splits = summary["settings"], summary["splits"]
    n_held = len(splits.held_out)
    machine = (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
               if not torch.cuda.is_available() else torch.cuda.get_device_name())
    parts = [
        f"# DPO on Anthropic HH with SmolLM2-135M-Instruct ({summary['size']}, seed {summary['seed']})", "",
        "The DPO paper's single-turn dialogue experiment (§6.2, Fig. 3) in miniature, offline: πref is "
        f"SmolLM2-135M-Instruct; DPO (β = {s.beta:g}) and Preferred-FT train on {len(splits.pref)} HH pairs for "
        f"{s.dpo_steps} and {s.sft_steps} steps of {s.batch_size} (AdamW, lr {s.lr:g}); Best-of-{s.bon_n} samples "
        f"πref and keeps the best by a reward model trained on the same pairs. Win rate: each method's reply to "
        f"{s.winrate_prompts} held-out prompts against the human-chosen "
        "reply, across sampling temperatures (ties ½).", "",
        PROXY if summary["judge_is_proxy"] else f"Judge: `{result.judge}`.", "",
        agreement_line(result), "",
        f"Data: {splits.total:,} HH pairs in the file, {splits.usable:,} usable (one shared prompt, two different "
        f"non-empty replies, chosen dialogue ≤ {s.max_chars} characters), split by seed {summary['seed']}: "
        f"{len(splits.pref)} preference-training, {len(splits.judge)} judge-training, {n_held} held out.", "",
        "## Win rate vs the chosen responses", "", winrate_table(result), "",
        "![win rate vs temperature](winrate.png)", "",
        "## Before and after: held-out preferences and perplexity", "",
        "Implicit reward r = β·log πθ/πref on the held-out pairs (πref against itself has r = 0 everywhere: no pair "
        "is ranked, accuracy 0 by the strict count). Perplexity of the held-out chosen dialogues, rendered by the "
        f"chat template ({summary['perplexity'][next(iter(summary['perplexity']))]['tokens']:,} tokens).", "",
        capability_table(summary), "",
        f"## Time ({machine})", "", stage_table(summary), "",
        "Per-comparison verdicts: `comparisons.jsonl`; every figure: `hh_results.json`, `winrate.json`.", "",
    ]
    return "\n".join(parts)


def write_report(result: WinrateResult, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes the win-rate files, hh_report.md and hh_results.json; prints the tables; returns the JSON summary."""
    note = PROXY if summary["judge_is_proxy"] else ""
    paths = write_outputs(result, out, note)
    report = markdown(result, summary)
    (out / "hh_report.md").write_text(report)
    data = {
        "size": summary["size"], "seed": summary["seed"], "seconds": summary["seconds"],
        "settings": dataclasses.asdict(summary["settings"]),
        "splits": {k: len(v) for k, v in vars(summary["splits"]).items() if isinstance(v, list)},
        "judge": result.judge, "judge_is_proxy": summary["judge_is_proxy"],
        "agreement": result.agreement.row() if result.agreement else None,
        "win_rates": [c.row() for c in result.cells], "implicit_reward": summary["accuracy"],
        "perplexity": summary["perplexity"], "stages": [dataclasses.asdict(s) for s in summary["stages"]],
    }
    (out / "hh_results.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{agreement_line(result)}\n\n{winrate_table(result)}\n\n{capability_table(summary)}\n\n"
          f"report: {out / 'hh_report.md'} (plot {paths['winrate.png']})")
    return data
