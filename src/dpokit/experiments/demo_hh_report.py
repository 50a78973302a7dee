"""The HH demo's report: hh_report.md (tables, verdicts), hh_results.json (every figure), and the win-rate files.

A verdict "X beats Y" is written only where the two 95% Wilson intervals do not overlap; otherwise "no separation".
"""

from __future__ import annotations

import dataclasses
import json
import os
from itertools import combinations
from pathlib import Path
from typing import Any

import torch

from dpokit.eval.winrate import Agreement, Cell, Rate, WinrateResult
from dpokit.eval.winrate_report import write_outputs

JUDGES_NOTE = ("**The judges are proxies.** The paper's judge is GPT-4; offline, the judges are a reward model that "
               "`dpokit rm` trained from SmolLM2-135M-Instruct on a split of the HH pairs no policy trains on, and "
               "SmolLM2-135M-Instruct itself asked the paper's judging prompt (p(A) vs p(B), both orders). Their "
               "agreement with the held-out human labels says how far to trust them; the better one judges the win "
               "rates. `--judge openai:MODEL` (with OPENAI_BASE_URL / OPENAI_API_KEY) adds an LLM judge.")


def interval(rate: Rate) -> str:
    return f"{rate.rate:.2f} [{rate.low:.2f}, {rate.high:.2f}]"


def separated(a: Rate, b: Rate) -> bool:
    """The two 95% intervals do not overlap."""
    return a.low > b.high or b.low > a.high


def judge_table(agreement: dict[str, Agreement], chosen: str) -> str:
    lines = ["| judge | agreement with human labels | 95% CI | n | ties | position bias | |", "|---" * 7 + "|"]
    for name, a in agreement.items():
        r = a.rate
        bias = "–" if a.position_bias is None else f"{a.position_bias:.0%}"
        note = ["**used for the win rates**"] if name == chosen else []
        if r.low <= 0.5 <= r.high:
            note.append("interval includes 0.5: not distinguishable from a coin")
        lines.append(f"| {name} | {r.rate:.3f} | [{r.low:.3f}, {r.high:.3f}] | {r.n} | {r.ties} | {bias} | "
                     f"{'; '.join(note)} |")
    return "\n".join(lines)


def arm_table(cells: list[Cell], kl: dict[str, Any], implicit: dict[str, dict]) -> str:
    """Arms as rows: win rate [95% CI] per temperature, KL to πref at T = 1, implicit-reward accuracy and margin."""
    temps = sorted({c.temperature for c in cells})
    arms = list(dict.fromkeys(c.model for c in cells))
    head = ("| arm | " + " | ".join(f"T = {t:g}" for t in temps) + " | KL(arm ‖ πref), nats | implicit-reward "
            "accuracy vs πref | margin |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm in arms:
        at = {c.temperature: c for c in cells if c.model == arm}
        rates = [interval(at[t].rate) if t in at else "–" for t in temps]
        k = kl.get(arm)
        kl_text = "–" if k is None else f"{k.mean:.2f} (analytic)" if k.se is None else f"{k.mean:.2f} ± {k.se:.2f}"
        imp = implicit.get(arm)
        imp_text = "– | –" if imp is None else f"{imp['accuracy']:.3f} | {imp['margin']:+.3f}"
        lines.append(f"| {arm} | " + " | ".join(rates) + f" | {kl_text} | {imp_text} |")
    return "\n".join(lines)


def verdicts(cells: list[Cell]) -> list[str]:
    """'X beats Y at T' for every pair of arms whose intervals separate at a temperature, and every arm whose interval
    excludes 0.5 (against the human-chosen replies); else one 'no separation' line."""
    found = []
    for t in sorted({c.temperature for c in cells}):
        at = [c for c in cells if c.temperature == t]
        for c in at:
            if c.rate.low > 0.5 or c.rate.high < 0.5:
                found.append(f"T = {t:g}: {c.model} {'beats' if c.rate.low > 0.5 else 'loses to'} the human-chosen "
                             f"replies ({interval(c.rate)})")
        for a, b in combinations(at, 2):
            if separated(a.rate, b.rate):
                win, lose = (a, b) if a.rate.rate > b.rate.rate else (b, a)
                found.append(f"T = {t:g}: {win.model} beats {lose.model} ({interval(win.rate)} vs "
                             f"{interval(lose.rate)})")
    return found or ["No separation: at every temperature, every two arms' 95% intervals overlap, and every arm's "
                     "includes 0.5."]


def budget(summary: dict[str, Any]) -> dict[str, Any]:
    """Offline DPO's label budget beside online DPO's and Best-of-N's sample budget."""
    s, rounds = summary["size"], summary["online"]
    offline = len(summary["splits"].pref)
    calls = rounds[-1]["label_calls"] if rounds else 0
    return {"offline_pairs": offline, "offline_human_comparisons": offline, "offline_steps": s.dpo_steps,
            "online_prompts": sum(r["prompts"] for r in rounds), "online_reward_calls": calls,
            "online_comparisons": calls // 2, "online_pairs_kept": sum(r["pairs"] for r in rounds),
            "online_steps": s.dpo_steps // s.online_rounds * s.online_rounds, "equal": calls == 2 * offline,
            "bon_samples": max(s.bon_ns) * s.winrate_prompts, "bon_reward_calls": max(s.bon_ns) * s.winrate_prompts}


def budget_text(b: dict[str, Any], s: Any) -> str:
    same = "equal" if b["equal"] else "NOT equal"
    return (f"Label budget ({same}): offline DPO trains on {b['offline_pairs']} pairs, each labelled once by a human "
            f"comparing two replies; online DPO asks Best-of-N's reward model {b['online_reward_calls']} times "
            f"({b['online_prompts']} prompts × K = 2 samples: two reward calls decide one pair, so "
            f"{b['online_comparisons']} comparisons, the same count); {b['online_pairs_kept']} pairs were kept (ties "
            f"and identical samples are dropped). Steps: {b['offline_steps']} (offline) and {b['online_steps']} "
            f"(online, {s.online_rounds} rounds). Best-of-N's sample budget: {max(s.bon_ns)} samples of πref per "
            f"prompt × {s.winrate_prompts} prompts = {b['bon_samples']} samples and as many reward-model calls, drawn "
            "once at T = 1; each N takes each prompt's first N.")


def stage_table(summary: dict[str, Any]) -> str:
    lines = ["| stage | seconds |", "|---|---|"]
    lines += [f"| {st.name} | {st.seconds:.0f} |" for st in summary["stages"]]
    lines.append(f"| **total** | **{summary['seconds']:.0f}** |")
    return "\n".join(lines)


def markdown(cells: list[Cell], kl: dict[str, Any], summary: dict[str, Any]) -> str:
    s, splits = summary["size"], summary["splits"]
    machine = (f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
               if not torch.cuda.is_available() else torch.cuda.get_device_name())
    parts = [
        f"# DPO on Anthropic HH, the paper's protocol, with SmolLM2-135M-Instruct ({s.label}, seed {summary['seed']})",
        "", "The DPO paper's single-turn dialogue experiment (§6.2, Fig. 3) in miniature, offline. No SFT model exists "
        "for HH, so **Preferred-FT** (`sft` on the chosen replies, from SmolLM2-135M-Instruct) is πref; **DPO** "
        f"(β = {s.beta:g}) starts from it and is measured against it; **Best-of-N** samples it. Beside them: **DPO "
        "from instruct** (DPO from SmolLM2-135M-Instruct against itself, what many users do), **online DPO** (from "
        "πref, labels by Best-of-N's reward model) and the instruct model itself. Training: "
        f"{len(splits.pref)} preference pairs, {s.sft_steps} / {s.dpo_steps} steps of {s.batch_size} (Preferred-FT / "
        f"each DPO arm; AdamW, lr {s.lr:g}). Win rate: each arm's reply to {s.winrate_prompts} held-out **single-turn**"
        f" prompts against the human-chosen reply (ties ½), up to {s.max_new_tokens} new tokens, 95% Wilson interval.",
        "", JUDGES_NOTE, "", "## Judges", "", judge_table(summary["agreement"], summary["judge"]), "",
        f"Measured on the {len(splits.held_out)} held-out single-turn pairs' human labels.", "",
        f"## Win rate vs the human-chosen replies (judge: {summary['judge']})", "",
        arm_table(cells, kl, summary["implicit"]), "",
        "KL: Σ over a reply's tokens of the exact per-token KL to πref (Preferred-FT), teacher-forced on each arm's "
        "own samples at T = 1, mean ± s.e. over prompts; Best-of-N: log N − (N−1)/N. Implicit reward β·log πθ/πref, "
        f"πref = Preferred-FT for every arm, on {s.accuracy_pairs} held-out pairs (πref against itself: 0 everywhere,"
        " accuracy 0 by the strict count). Best-of-N is measured at T = 1 only (its samples are πref's own).", "",
        "![win rate vs temperature](winrate.png)", "", "### Verdicts (only where 95% intervals separate)", "",
        *[f"- {v}" for v in verdicts(cells)], "", "## Budgets", "", budget_text(budget(summary), s), "",
        f"Data: {splits.total:,} HH pairs in the file, {splits.usable:,} usable (one shared prompt, two different "
        f"non-empty replies, chosen dialogue ≤ {s.max_chars} characters), {splits.single_turn} of them single-turn; "
        f"split by seed {summary['seed']}: {len(splits.held_out)} held out (single-turn), {len(splits.judge)} "
        f"judge-training, {len(splits.pref)} preference-training.", "",
        f"## Time ({machine})", "", stage_table(summary), "",
        "Per-comparison verdicts: `comparisons.jsonl`; every figure: `hh_results.json`, `winrate.json`.", ""]
    return "\n".join(parts)


def write_report(wins: Any, bon: Any, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Writes the win-rate files, hh_report.md and hh_results.json; prints the tables; returns the JSON summary."""
    cells, kl = wins.cells + bon.cells, {**wins.kl, **bon.kl}
    chosen = summary["agreement"][summary["judge"]]
    s = summary["size"]
    settings = {"baseline": "chosen", "num_samples": 1, "max_new_tokens": s.max_new_tokens, "seed": summary["seed"],
                "temperatures": list(s.temperatures), "limit": s.winrate_prompts}
    result = WinrateResult(summary["judge"], cells, wins.rows + bon.rows, chosen, settings)
    paths = write_outputs(result, out, JUDGES_NOTE)
    (out / "hh_report.md").write_text(markdown(cells, kl, summary))
    data = {
        "size": s.label, "seed": summary["seed"], "seconds": summary["seconds"], "settings": dataclasses.asdict(s),
        "splits": {k: len(v) for k, v in vars(summary["splits"]).items() if isinstance(v, list)},
        "judges": {name: a.row() for name, a in summary["agreement"].items()}, "judge": summary["judge"],
        "win_rates": [c.row() for c in cells], "kl_to_reference": {k: dataclasses.asdict(v) for k, v in kl.items()},
        "implicit_reward": summary["implicit"], "budget": budget(summary), "online_rounds": summary["online"],
        "verdicts": verdicts(cells), "stages": [dataclasses.asdict(st) for st in summary["stages"]],
        "held_out_prompts": [r["prompt"] for r in summary["splits"].held_out[:s.winrate_prompts]],
    }
    (out / "hh_results.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{judge_table(summary['agreement'], summary['judge'])}\n\n{arm_table(cells, kl, summary['implicit'])}\n\n"
          + "\n".join(verdicts(cells)) + f"\n\nreport: {out / 'hh_report.md'} (plot {paths['winrate.png']})")
    return data
