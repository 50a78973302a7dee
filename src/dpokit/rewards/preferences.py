"""Preference data from the model's own samples, the DPO paper's recipe (§6.1): for each prompt sample K completions
from πref (the SFT model), score each with the ground-truth reward, and keep

- every ordered pair (better, worse): K(K-1)/2 = 6 pairs per prompt for K = 4, as explicit JSONL for pairwise losses;
- the ranked K-list, best first, as ranked JSONL for the Plackett–Luce loss (and best-of-K for Preferred-FT).

Two departures, both counted in `PreferenceStats`: a pair whose two completions score exactly the same carries no
preference, so it is left out (a classifier's probabilities never tie, a lexicon score of 0.0 often does); and a prompt
with an empty or a repeated completion is dropped whole, since a ranked list needs K distinct responses. Tied
completions stay in the ranked list in the order they were sampled (a ranking cannot say "tie").
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

import torch

from dpokit.core.sections import SamplingSettings
from dpokit.data.chat import render_prompt, render_reply
from dpokit.lm.sampling import sample
from dpokit.rewards.sources import Reward

LABELS = ("best_worst", "all_pairs", "ranked", "sampled")  # how scored completions become preferences


@dataclass
class PreferenceStats:
    """What went into the preference files.

    Attributes:
        prompts: prompts sampled.
        kept_prompts: prompts whose K completions were all non-empty and distinct.
        pairs: ordered pairs written (ties left out).
        tied_pairs: pairs left out because both completions scored the same.
        lists_with_ties: ranked lists written with at least one tie inside.
        mean_reward: mean reward over all sampled completions (the SFT model's, on training prompts).
        mean_best: mean over kept prompts of the best of K rewards.
        mean_worst: mean over kept prompts of the worst of K rewards.
    """

    prompts: int
    kept_prompts: int
    pairs: int
    tied_pairs: int
    lists_with_ties: int
    mean_reward: float
    mean_best: float
    mean_worst: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class PreferenceFiles:
    pairs_path: Path
    ranked_path: Path
    samples_per_prompt: int
    stats: PreferenceStats


def build_preferences(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    reward: Reward,
    samples_per_prompt: int,
    settings: SamplingSettings,
    out_dir: Path,
    seed: int,
    progress: bool = True,
    chat: bool = False,
) -> PreferenceFiles:
    """Samples, scores and writes `pairs.jsonl` (explicit format) and `ranked.jsonl` (ranked, with scores).

    With `chat`, prompts are sampled through the chat template, and the files hold the template's text: each prompt
    rendered with its generation prompt, each completion as the template renders the assistant's reply (closing
    tokens included), so training sees exactly the ids sampling saw.
    """
    samples = sample(model, tokenizer, prompts, settings, seed=seed, num_samples=samples_per_prompt,
                     progress=progress, chat=chat)
    scores = reward(samples.prompts, samples.completions)
    texts_of = functools.partial(training_texts, tokenizer, chat)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs_path, ranked_path = out_dir / "pairs.jsonl", out_dir / "ranked.jsonl"
    counts = {"kept": 0, "pairs": 0, "ties": 0, "tied_lists": 0}
    best, worst = [], []
    k = samples_per_prompt
    with pairs_path.open("w") as pairs_file, ranked_path.open("w") as ranked_file:
        for i, prompt in enumerate(prompts):
            texts, values = samples.completions[i * k:(i + 1) * k], scores[i * k:(i + 1) * k]
            if not usable(texts):
                continue
            prompt, texts = texts_of(prompt, texts)
            ranked_file.write(json.dumps({"prompt": prompt, "responses": texts, "scores": values}) + "\n")
            pairs = ordered_pairs(values)
            for a, b in pairs:
                pairs_file.write(json.dumps({"prompt": prompt, "chosen": texts[a], "rejected": texts[b]}) + "\n")
            counts["kept"] += 1
            counts["pairs"] += len(pairs)
            counts["ties"] += k * (k - 1) // 2 - len(pairs)
            counts["tied_lists"] += len(set(values)) < k
            best.append(max(values))
            worst.append(min(values))
    stats = PreferenceStats(
        prompts=len(prompts), kept_prompts=counts["kept"], pairs=counts["pairs"], tied_pairs=counts["ties"],
        lists_with_ties=counts["tied_lists"], mean_reward=_mean(scores), mean_best=_mean(best),
        mean_worst=_mean(worst),
    )
    return PreferenceFiles(pairs_path, ranked_path, k, stats)


def usable(texts: Sequence[str]) -> bool:
    """A prompt's K completions can form preferences: none empty, no two the same (a ranked list needs K distinct
    responses, and a pair of equal texts carries no preference)."""
    return len(set(texts)) == len(texts) and all(t.strip() for t in texts)


def ordered_pairs(values: Sequence[float]) -> list[tuple[int, int]]:
    """Every pair (better, worse) of the K scored completions, best first; pairs with equal scores are left out.

    >>> ordered_pairs([0.1, 0.9, 0.1])
    [(1, 0), (1, 2)]
    """
    order = sorted(range(len(values)), key=lambda j: -values[j])  # stable: ties keep their sampled order
    return [(a, b) for a, b in combinations(order, 2) if values[a] > values[b]]


class Labelled(NamedTuple):
    """One prompt's preference records, the (chosen, rejected) pairs they hold, and the pairs left out as ties."""

    records: list[dict]
    pairs: int
    tied: int


def label_group(prompt: str, texts: Sequence[str], values: Sequence[float], labels: str,
                rng: random.Random) -> Labelled:
    """One prompt's scored completions as preference records, by `labels` (`LABELS`).

    - best_worst: the best against the worst (a tie when they score the same);
    - all_pairs: every ordered pair (`ordered_pairs`);
    - ranked: the K responses best first with their scores, one record (for Plackett–Luce; pairwise losses train
      on all its pairs);
    - sampled: every pair, its winner drawn with p = σ(r_a − r_b): Bradley–Terry labels, whose DPO optimum is
      π* ∝ πref·exp(r/β) (equal scores are a fair coin, not a tie).

    >>> label_group("p", ["a", "b", "c"], [0.0, 2.0, 1.0], "best_worst", random.Random(0))
    Labelled(records=[{'prompt': 'p', 'chosen': 'b', 'rejected': 'a'}], pairs=1, tied=0)
    """
    k = len(texts)
    if labels == "ranked":
        order = sorted(range(k), key=lambda j: -values[j])
        ranked = {"prompt": prompt, "responses": [texts[j] for j in order], "scores": [values[j] for j in order]}
        strict = len(ordered_pairs(values))
        return Labelled([ranked], strict, k * (k - 1) // 2 - strict)
    if labels == "sampled":
        pairs = []
        for a, b in combinations(range(k), 2):
            a_wins = rng.random() < 1.0 / (1.0 + math.exp(values[b] - values[a]))
            pairs.append((a, b) if a_wins else (b, a))
    elif labels == "best_worst":
        best = max(range(k), key=lambda j: values[j])
        worst = min(range(k), key=lambda j: values[j])
        pairs = [(best, worst)] if values[best] > values[worst] else []
        return Labelled([_pair(prompt, texts, a, b) for a, b in pairs], len(pairs), 1 - len(pairs))
    else:
        pairs = ordered_pairs(values)
    return Labelled([_pair(prompt, texts, a, b) for a, b in pairs], len(pairs), k * (k - 1) // 2 - len(pairs))


def _pair(prompt: str, texts: Sequence[str], chosen: int, rejected: int) -> dict:
    return {"prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected]}


def training_texts(tokenizer, chat: bool, prompt: str | list[dict], completions: list[str],
                    ) -> tuple[str, list[str]]:
    """The prompt and completions as training data holds them: as they are, or rendered by the chat template."""
    if not chat:
        return prompt, completions
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    prompt_text = render_prompt(tokenizer, prompt)
    return prompt_text, [render_reply(tokenizer, messages, prompt_text, [{"role": "assistant", "content": c}])
                         for c in completions]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
