"""The HH demo's evaluation: each judge's agreement with the held-out human labels, win rates of every arm against
the human-chosen replies of the held-out single-turn prompts, Best-of-N from πref, and each arm's KL to πref.

    judges (dpokit rm on the judge split; SmolLM2 as a local-LM judge, both orders; --judge) -> agreement ± 95% CI
    the better judge -> win rates: each arm sampled at each temperature (seeded: every arm sees the same random
      numbers), its reply against the chosen one; at T = 1 (the arm's own distribution) also Σ-token KL(arm ‖ πref)
    Best-of-N: one draw of max N samples of πref per prompt at T = 1, best of the first N by Best-of-N's reward model
      for each N (the sentiment demo's prefixes), KL log N − (N−1)/N (analytic)
    implicit rewards β·log πθ/πref of every arm against πref = Preferred-FT on held-out pairs
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dpokit.core.sections import ModelConfig, SamplingSettings
from dpokit.eval.judges import Comparison, Judge
from dpokit.eval.winrate import Agreement, Cell, Judged, judge_agreement, judge_cell
from dpokit.eval.winrate_config import PromptSet, read_prompt_set
from dpokit.experiments.demo_hh_train import train_config
from dpokit.experiments.frontier_eval import mean_of, standard_error
from dpokit.lm.sampling import sample
from dpokit.lm.sequence_kl import sequence_kl
from dpokit.models.loading import default_device, load_model
from dpokit.models.sampling import load_for_sampling
from dpokit.rewards.sources import load_reward
from dpokit.rlhf.bon import analytic_kl, best_of_n, chosen_indices
from dpokit.trainer.run import evaluate_policy

if TYPE_CHECKING:
    from dpokit.experiments.demo_hh_sizes import HHSize

PROMPT_SET = "held-out single-turn"
KL_TEMPERATURE = 1.0  # an arm's own distribution: where its sampled KL to πref is the sequence KL


@dataclass(frozen=True)
class KL:
    """Mean Σ-token KL(arm ‖ πref) over the held-out prompts at T = 1, nats; `se` None when analytic (Best-of-N)."""

    mean: float
    se: float | None


@dataclass
class WinRates:
    """What the win-rate stage produces: one cell per (arm, temperature), every judged comparison, KL per arm."""

    cells: list[Cell]
    rows: list[Judged]
    kl: dict[str, KL]


def agreements(judges: dict[str, Judge], held: Path, limit: int, say: Callable[[str], None]) -> dict[str, Agreement]:
    """Each judge on the held-out human labels (the chosen reply as the "model", the rejected one as the baseline)."""
    found = {}
    for name, judge in judges.items():
        found[name] = judge_agreement(judge, str(held), limit)
        rate = found[name].rate
        say(f"[hh demo] judge {name}: agreement {rate.rate:.3f} [{rate.low:.3f}, {rate.high:.3f}] over {rate.n} pairs")
    return found


def better_judge(found: dict[str, Agreement]) -> str:
    """The judge that agrees with the human labels most often (the first listed on a tie)."""
    return max(found, key=lambda name: found[name].rate.rate)


def held_prompts(size: HHSize, held: Path) -> PromptSet:
    return read_prompt_set(str(held), "chosen", chat=True, limit=size.winrate_prompts)


def arm_winrates(size: HHSize, arms: dict[str, Path], reference: Path, held: Path, judge: Judge,
                 seed: int) -> WinRates:
    """Every arm at every temperature against the chosen replies; at T = 1 its KL to `reference` (πref) too."""
    prompts = held_prompts(size, held)
    ref_model = load_model(str(reference), ModelConfig()).to(default_device()).eval()
    result = WinRates([], [], {})
    for name, path in arms.items():
        loaded = load_for_sampling(str(path), True, name=name)
        loaded.model.eval()
        for t in size.temperatures:
            settings = SamplingSettings(size.max_new_tokens, t, 1.0, size.sample_batch_size)
            drawn = sample(loaded.model, loaded.tokenizer, prompts.prompts, settings, seed, progress=True, chat=True)
            comparisons = [(i, 0, Comparison(p, c, b)) for i, (p, c, b) in
                           enumerate(zip(prompts.prompts, drawn.completions, prompts.baselines, strict=True))]
            cell, judged = judge_cell(judge, name, PROMPT_SET, t, comparisons)
            result.cells.append(cell)
            result.rows += judged
            if t == KL_TEMPERATURE:
                with torch.no_grad():
                    kls = sequence_kl(loaded.model, ref_model, drawn.prompt_ids, drawn.completion_ids,
                                      size.sample_batch_size).tolist()
                result.kl[name] = KL(mean_of(kls), standard_error(kls))
        del loaded
    return result


def bon_winrates(size: HHSize, reference: Path, reward_model: Path, held: Path, judge: Judge, seed: int) -> WinRates:
    """Best-of-N from πref for each N in `size.bon_ns`: one draw of max N samples per prompt at T = 1, the best of
    each prompt's first N by the reward model, judged against the chosen reply like the arms."""
    prompts = held_prompts(size, held)
    loaded = load_for_sampling(str(reference), True, name="πref")
    settings = SamplingSettings(size.max_new_tokens, KL_TEMPERATURE, 1.0, size.sample_batch_size)
    draw = best_of_n(loaded.model, loaded.tokenizer, prompts.prompts, load_reward(str(reward_model)),
                     max(size.bon_ns), settings, seed, chat=True, progress=True)
    result = WinRates([], [], {})
    for n in size.bon_ns:
        best = chosen_indices(draw.rewards, n)
        comparisons = [(i, b, Comparison(p, texts[b], base)) for i, (p, texts, b, base) in
                       enumerate(zip(prompts.prompts, draw.completions, best, prompts.baselines, strict=True))]
        cell, judged = judge_cell(judge, f"Best-of-{n}", PROMPT_SET, KL_TEMPERATURE, comparisons)
        result.cells.append(cell)
        result.rows += judged
        result.kl[f"Best-of-{n}"] = KL(analytic_kl(n), None)
    return result


def implicit_rewards(size: HHSize, arms: dict[str, Path], reference: Path, pairs: Path) -> dict[str, dict[str, float]]:
    """Held-out accuracy and mean margin of the implicit reward β·log πθ/πref of each arm, πref = `reference` (a tie,
    as for πref against itself, counts as no win)."""
    found = {}
    for name, path in arms.items():
        cfg = train_config(size, path, pairs, path / "eval", 1, 1e-6, 0)
        cfg.reference.name_or_path, cfg.loss.beta = str(reference), size.beta
        cfg.train.shuffle, cfg.train.progress = False, False
        metrics = evaluate_policy(cfg, say=lambda _: None)
        found[name] = {"accuracy": metrics["rewards/accuracies"], "margin": metrics["rewards/margins"],
                       "reference": str(reference)}
    return found
