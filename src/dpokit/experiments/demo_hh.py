"""`dpokit demo --task hh`: the DPO paper's single-turn dialogue experiment (§6.2, Fig. 3) as the paper ran it, in
miniature, on a real model, offline.

    Anthropic HH pairs (../shared/data) -- seeded split --> preference-training | judge-training | held-out
      (held-out: single-turn pairs only, the paper's evaluation subset; demo_hh_data.py)
    SmolLM2-135M-Instruct (GGUF from PyPI, saved once as safetensors)
    judge-training -> dpokit rm -> the reward-model judge; SmolLM2 as a local-LM judge (both orders); each judge's
      agreement with the held-out human labels, the better one judges the win rates
    preference-training -> dpokit rm -> Best-of-N's reward model (it also labels online DPO)
                        -> Preferred-FT (sft on the chosen replies) = πref (no SFT model exists for HH)
                        -> DPO from πref against πref (β 0.1) | DPO from the instruct model against it
                        -> online DPO from πref at offline DPO's label budget (demo_hh_train.py)
    held-out -> win rates vs the chosen replies per temperature, Best-of-N from πref at several N, KL to πref,
                implicit rewards against πref (demo_hh_eval.py) -> hh_report.md (demo_hh_report.py)

The paper's judge is GPT-4; offline, the judges are small models, and the report gives each one's agreement with
the human labels. With `judge_source` set (e.g. `openai:gpt-4o-mini` and OPENAI_BASE_URL), that judge is a third.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dpokit.eval.judges import JudgeConfig
from dpokit.eval.judging import load_judge
from dpokit.experiments import demo_hh_eval as evaluation
from dpokit.experiments import demo_hh_train as arms
from dpokit.experiments.demo import torch_threads
from dpokit.experiments.demo_hh_data import find_hh_data, split_hh, write_jsonl
from dpokit.experiments.demo_hh_report import write_report
from dpokit.experiments.demo_hh_sizes import SIZES, HHSize

INSTRUCT_ARM = "SmolLM2-135M-Instruct"
SFT_ARM = "Preferred-FT (πref)"


@dataclass
class Stage:
    name: str
    seconds: float


class Timer:
    """Times the demo's stages for the report."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    def run(self, name: str, fn, *args, reuses: Path | None = None, **kwargs):
        """Runs `fn(*args, **kwargs)` as the stage `name`; `reuses`: the stage's model directory, which a finished
        earlier run may have left (the stage is then marked reused)."""
        if reuses is not None and arms.trained(reuses):
            name += " (reused: trained by an earlier run into this directory)"
        tqdm.write(f"[hh demo] {name} ...")
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.stages.append(Stage(name, time.perf_counter() - start))
        tqdm.write(f"[hh demo] {name}: {self.stages[-1].seconds:.0f} s")
        return result


def run_hh_demo(output_dir: str, size: str = "full", seed: int = 0, data: str | None = None,
                judge_source: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Runs the whole experiment (module docstring) and writes hh_report.md, hh_results.json and the win-rate files.

    Args:
        size: "full", "quick" or "gpu" (`SIZES`).
        judge_source: a third judge beside the two offline ones (any `judge.source`: openai:MODEL, lm:MODEL, ...).
        threads: torch CPU threads while it runs (restored after); None keeps torch's setting.
    """
    with torch_threads(threads):
        return _run_hh_demo(output_dir, SIZES[size], seed, data, judge_source)


def _run_hh_demo(output_dir: str, size: HHSize, seed: int, data: str | None, judge_source: str | None) -> dict:
    out, timer, start = Path(output_dir), Timer(), time.perf_counter()
    splits = split_hh(find_hh_data(data), size.held_out, size.judge_pairs, size.pref_pairs, size.max_chars, seed)
    files = {name: write_jsonl(getattr(splits, name), out / "data" / f"{name}.jsonl")
             for name in ("pref", "judge", "held_out")}
    files["accuracy"] = write_jsonl(splits.held_out[:size.accuracy_pairs], out / "data" / "accuracy.jsonl")
    files["online_prompts"] = write_jsonl([{"prompt": r["prompt"]} for r in splits.pref],
                                          out / "data" / "online_prompts.jsonl")
    models = _train(size, files, out, seed, timer)
    judges = timer.run("judge agreement with the held-out human labels", _agreements, size, models, files, out,
                       judge_source)
    judge_name = evaluation.better_judge(judges.agreement)
    policies = {INSTRUCT_ARM: models["instruct"], SFT_ARM: models["sft"], "DPO (from πref)": models["dpo"],
                "DPO from instruct": models["dpo_instruct"], "online DPO (from πref)": models["online"]}
    implicit = timer.run("implicit rewards against πref", evaluation.implicit_rewards, size, policies,
                         models["sft"], files["accuracy"])
    judge = judges.judges[judge_name]
    wins = timer.run(f"win rates of the arms ({judge_name})", evaluation.arm_winrates, size, policies,
                     models["sft"], files["held_out"], judge, seed)
    bon = timer.run(f"Best-of-N from πref, N in {size.bon_ns}", evaluation.bon_winrates, size, models["sft"],
                    models["rm"], files["held_out"], judge, seed)
    summary = {"size": size, "seed": seed, "splits": splits, "implicit": implicit, "stages": timer.stages,
               "seconds": time.perf_counter() - start, "agreement": judges.agreement, "judge": judge_name,
               "online": models["online_rounds"], "files": files}
    return write_report(wins, bon, summary, out)


def _train(size: HHSize, files: dict[str, Path], out: Path, seed: int, timer: Timer) -> dict[str, Any]:
    """Every trained model of the demo, in dependency order (module docstring)."""
    models = out / "models"
    found: dict[str, Any] = {"instruct": timer.run("SmolLM2-135M-Instruct: GGUF to safetensors", arms.save_instruct,
                                                   out)}
    for key, name, fn, start, data in (
            ("judge_rm", "judge: dpokit rm on the judge split", arms.train_reward_model, "instruct", "judge"),
            ("rm", "Best-of-N's reward model: dpokit rm on the preference split", arms.train_reward_model,
             "instruct", "pref"),
            ("sft", "Preferred-FT (πref): sft on the chosen replies", arms.train_sft, "instruct", "pref"),
            ("dpo", "DPO from πref, against πref", arms.train_dpo, "sft", "pref"),
            ("dpo_instruct", "DPO from the instruct model, against it", arms.train_dpo, "instruct", "pref")):
        found[key] = timer.run(name, fn, size, found[start], files[data], models / key, seed, reuses=models / key)
    found["online"] = models / "online"
    found["online_rounds"] = timer.run(
        f"online DPO from πref: {size.online_rounds} rounds, labels by Best-of-N's reward model", arms.train_online,
        size, found["sft"], files["online_prompts"], found["rm"], found["online"], seed, reuses=found["online"])
    return found


@dataclass
class Judges:
    judges: dict[str, Any]
    agreement: dict[str, Any]


def _agreements(size: HHSize, models: dict[str, Any], files: dict[str, Path], out: Path,
                judge_source: str | None) -> Judges:
    """The judges and each one's agreement with the held-out human labels."""
    judges = {"reward model (dpokit rm, judge split)": load_judge(JudgeConfig(source=str(models["judge_rm"])))}
    if size.lm_judge:
        judges["local LM (SmolLM2-135M-Instruct, both orders)"] = load_judge(
            JudgeConfig(source=f"lm:{models['instruct']}"))
    if judge_source:
        judges[judge_source] = load_judge(JudgeConfig(source=judge_source), cache=str(out / "judge_cache.jsonl"))
    return Judges(judges, evaluation.agreements(judges, files["held_out"], size.held_out, tqdm.write))
