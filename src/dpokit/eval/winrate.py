"""Judged win rates (the DPO paper's Fig. 2 right and Fig. 3): each model's samples against a baseline, per prompt
set and sampling temperature, decided by a judge (`eval.judges`).

    for each model:  for each prompt set:  for each temperature:
        sample completions (seeded: every model sees the same random numbers at a temperature)
        -> Comparison(prompt, completion, baseline) -> judge -> verdicts -> win rate (ties count half)

A win rate is the mean score of its comparisons (1 win, ½ tie, 0 loss), `se` its standard error (sample standard
deviation / √n), and its 95% interval the Wilson score interval at that rate and n (it stays inside [0, 1] and does not
collapse to a point at 0 or 1, as the normal interval would). Judge agreement (§6.4) is the same statistic with the
human-preferred response in the model's place and the other one as the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.core import settings as config_io
from dpokit.core.sections import SamplingSettings
from dpokit.eval.judges import Comparison, Judge, Judgment, Prompt
from dpokit.eval.judging import load_judge
from dpokit.eval.winrate_config import PromptSet, WinrateConfig, named, read_prompt_set
from dpokit.lm.sampling import sample
from dpokit.models.sampling import SamplingModel, load_for_sampling

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """A win rate over n comparisons: `rate` = mean score, `se` its standard error, [low, high] 95% Wilson."""

    rate: float
    ties: int
    n: int
    se: float
    low: float
    high: float


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion p observed over n trials.

    >>> [round(x, 4) for x in wilson(0.5, 100)]
    [0.4038, 0.5962]
    >>> [round(x, 4) for x in wilson(1.0, 10)]
    [0.7225, 1.0]
    """
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_of(judgments: Sequence[Judgment]) -> Rate:
    """Win rate, ties, n, standard error and 95% interval of some judgments.

    >>> from dpokit.eval.judges import Judgment
    >>> r = rate_of([Judgment("model"), Judgment("tie"), Judgment("baseline"), Judgment("model")])
    >>> r.rate, r.ties, r.n, round(r.se, 4)
    (0.625, 1, 4, 0.2394)
    """
    scores = [j.score for j in judgments]
    n = len(scores)
    mean = sum(scores) / n if n else float("nan")
    var = sum((s - mean) ** 2 for s in scores) / (n - 1) if n > 1 else 0.0
    low, high = wilson(mean, n) if n else (float("nan"), float("nan"))
    return Rate(mean, sum(j.verdict == "tie" for j in judgments), n, math.sqrt(var / n) if n else float("nan"),
                low, high)


def position_bias(judgments: Sequence[Judgment]) -> float | None:
    """Share of the comparisons judged in both orders where the judge picked the same position both times (so its
    verdict flipped with the order); None for a judge that is not asked in orders."""
    flags = [j.position_biased for j in judgments if j.position_biased is not None]
    return sum(flags) / len(flags) if flags else None


@dataclass(frozen=True)
class Judged:
    """One judged comparison: a line of comparisons.jsonl."""

    model: str
    prompt_set: str
    temperature: float
    index: int  # the prompt's position in its set
    sample: int  # which of its samples
    comparison: Comparison
    judgment: Judgment

    def row(self) -> dict[str, Any]:
        j = self.judgment
        return {"model": self.model, "prompt_set": self.prompt_set, "temperature": self.temperature,
                "index": self.index, "sample": self.sample, "prompt": self.comparison.prompt,
                "completion": self.comparison.completion, "baseline": self.comparison.baseline,
                "verdict": j.verdict, "parsed": j.parsed, "raw": j.raw,
                "orders": [{"model_first": o.model_first, "p_model": o.p, "raw": o.raw} for o in j.orders]}


@dataclass(frozen=True)
class Cell:
    """The win rate of one model on one prompt set at one temperature."""

    model: str
    prompt_set: str
    temperature: float
    rate: Rate
    unparsed: int
    position_bias: float | None

    def row(self) -> dict[str, Any]:
        r = self.rate
        return {"model": self.model, "prompt_set": self.prompt_set, "temperature": self.temperature,
                "win_rate": r.rate, "ties": r.ties, "n": r.n, "se": r.se, "ci95": [r.low, r.high],
                "unparsed": self.unparsed, "position_bias": self.position_bias}


@dataclass(frozen=True)
class Agreement:
    """How often the judge prefers the human-preferred response (§6.4): `rate` is that share, ties half."""

    source: str
    rate: Rate
    unparsed: int
    position_bias: float | None

    def row(self) -> dict[str, Any]:
        r = self.rate
        return {"source": self.source, "agreement": r.rate, "ties": r.ties, "n": r.n, "se": r.se,
                "ci95": [r.low, r.high], "unparsed": self.unparsed, "position_bias": self.position_bias}


@dataclass
class WinrateResult:
    judge: str
    cells: list[Cell]
    comparisons: list[Judged]
    agreement: Agreement | None
    settings: dict[str, Any]


def cell_of(model: str, prompt_set: str, temperature: float, judged: Sequence[Judged]) -> Cell:
    judgments = [j.judgment for j in judged]
    return Cell(model, prompt_set, temperature, rate_of(judgments), sum(not j.parsed for j in judgments),
                position_bias(judgments))


def judge_agreement(judge: Judge, source: str, limit: int) -> Agreement:
    """The judge on preference data: the chosen response as the "model", the rejected one as the baseline.

    Args:
        source: preference data a prompt set can be read from (HH-style, or records with prompt/chosen/rejected).
    """
    chosen = read_prompt_set(source, "chosen", chat=False, limit=limit)
    rejected = read_prompt_set(source, "rejected", chat=False, limit=limit)
    comparisons = [Comparison(p, c, r) for p, c, r in zip(chosen.prompts, chosen.baselines, rejected.baselines,
                                                          strict=True)]
    judgments = judge.judge(comparisons)
    return Agreement(source, rate_of(judgments), sum(not j.parsed for j in judgments), position_bias(judgments))


def run_winrate(cfg: WinrateConfig, judge: Judge | None = None, say: Callable[[str], None] = print) -> WinrateResult:
    """Samples every model on every prompt set at every temperature, judges each sample against the baseline.

    Args:
        cfg: the settings; `output_dir` is required (the LLM judge's cache goes there by default).
        judge: used instead of loading `cfg.judge` (e.g. a judge object built in Python).
        say: where progress lines go.
    """
    config_io.validate(cfg, require=("output_dir",))
    if judge is None:
        judge = load_judge(cfg.judge, cache=str(Path(cfg.output_dir) / "judge_cache.jsonl"))
    agreement = None
    if cfg.agreement:
        agreement = judge_agreement(judge, cfg.agreement, cfg.agreement_limit)
        say(f"judge agreement with the human labels of {cfg.agreement}: {agreement.rate.rate:.3f} "
            f"[{agreement.rate.low:.3f}, {agreement.rate.high:.3f}] over {agreement.rate.n} pairs")
    sampler = _Sampler(cfg, say)
    sampler.prompt_sets(chat=False)  # read now: a bad record fails before any model loads
    judged: list[Judged] = []
    cells: list[Cell] = []
    for model_spec in cfg.models:
        model_name, _ = named(model_spec)
        for (set_name, temperature), comparisons in sampler.comparisons(model_spec).items():
            say(f"judging {model_name} on {set_name} at T={temperature:g}: {len(comparisons)} comparisons")
            cell, rows = judge_cell(judge, model_name, set_name, temperature, comparisons)
            cells.append(cell)
            judged += rows
    return WinrateResult(judge.name, cells, judged, agreement, config_io.to_dict(cfg))


def judge_cell(judge: Judge, model: str, prompt_set: str, temperature: float,
               comparisons: Sequence[tuple[int, int, Comparison]]) -> tuple[Cell, list[Judged]]:
    """Judges one model's comparisons on one prompt set at one temperature.

    Args:
        comparisons: (prompt index, sample index, comparison) triples.
    """
    verdicts = judge.judge([c for _, _, c in comparisons])
    rows = [Judged(model, prompt_set, temperature, i, k, c, v) for (i, k, c), v in zip(comparisons, verdicts,
                                                                                      strict=True)]
    return cell_of(model, prompt_set, temperature, rows), rows


class _Sampler:
    """Samples models on the prompt sets; a baseline model's samples are drawn once and reused for every model."""

    def __init__(self, cfg: WinrateConfig, say: Callable[[str], None]):
        self.cfg, self.say = cfg, say
        self._sets: dict[bool, list[PromptSet]] = {}
        self._baseline: dict[tuple[str, float], list[str]] = {}
        self.baseline_is_model = cfg.baseline_is_model

    def prompt_sets(self, chat: bool) -> list[PromptSet]:
        if chat not in self._sets:
            field_name = None if self.baseline_is_model else self.cfg.baseline
            self._sets[chat] = [read_prompt_set(s, field_name, chat, self.cfg.limit) for s in self.cfg.prompts]
        return self._sets[chat]

    def comparisons(self, model_spec: str) -> dict[tuple[str, float], list[tuple[int, int, Comparison]]]:
        """(prompt set, temperature) -> [(prompt index, sample index, comparison)] for one model."""
        cfg = self.cfg
        name, path = named(model_spec)
        loaded = load_for_sampling(path, cfg.chat, name=name)
        sets = self.prompt_sets(loaded.chat)
        out = {}
        for prompt_set in sets:
            for temperature in cfg.temperatures:
                samples = self._sample(loaded, prompt_set, temperature, cfg.seed)
                baselines = self._baselines(prompt_set, temperature, samples.per_prompt)
                out[prompt_set.name, temperature] = [
                    (i // samples.per_prompt, i % samples.per_prompt, Comparison(p, c, b))
                    for i, (p, c, b) in enumerate(zip(samples.prompts, samples.completions, baselines, strict=True))]
        del loaded
        return out

    def _sample(self, loaded: SamplingModel, prompt_set: PromptSet, temperature: float, seed: int) -> _Drawn:

        per_prompt = 1 if temperature == 0 else self.cfg.num_samples
        settings = SamplingSettings(self.cfg.max_new_tokens, temperature, self.cfg.top_p, self.cfg.batch_size)
        self.say(f"sampling {loaded.name} on {prompt_set.name} ({len(prompt_set.prompts)} prompts x {per_prompt}) "
                 f"at T={temperature:g}")
        drawn = sample(loaded.model, loaded.tokenizer, prompt_set.prompts, settings, seed, per_prompt,
                       progress=True, chat=loaded.chat)
        return _Drawn(drawn.prompts, drawn.completions, per_prompt)

    def _baselines(self, prompt_set: PromptSet, temperature: float, per_prompt: int) -> list[str]:
        if not self.baseline_is_model:
            return [b for b in prompt_set.baselines for _ in range(per_prompt)]
        t = temperature if self.cfg.baseline_temperature is None else self.cfg.baseline_temperature
        key = (prompt_set.name, t)
        if key not in self._baseline:  # a different seed from the models': independent draws, not the same ones
            loaded = load_for_sampling(self.cfg.baseline, self.cfg.chat, name="baseline")
            base_set = next(s for s in self.prompt_sets(loaded.chat) if s.name == prompt_set.name)
            drawn = self._sample(loaded, base_set, t, self.cfg.seed + 1_000_003)
            self._baseline[key] = drawn.completions
        return _fit(self._baseline[key], 1 if t == 0 else self.cfg.num_samples, per_prompt)


@dataclass
class _Drawn:
    prompts: list[Prompt]
    completions: list[str]
    per_prompt: int


def _fit(baselines: list[str], have: int, want: int) -> list[str]:
    """Baseline samples laid out `have` per prompt, re-laid `want` per prompt (repeating round-robin)."""
    if have == want:
        return baselines
    prompts = len(baselines) // have
    return [baselines[p * have + k % have] for p in range(prompts) for k in range(want)]
