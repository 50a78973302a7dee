"""The demo's task: short movie reviews from a small probabilistic grammar, scored by VADER.

There is no IMDb offline, so the demo writes its own review corpus. Each review has a hidden tone p (the chance that a
sentiment-bearing slot takes a positive word), drawn uniformly, so the corpus spans glowing, mixed and scathing
reviews. Sentences mix plain judgments ("the acting was very good."), negation ("the plot was not bad."), contrast
("the music was lovely, but the story was dull."), opinions ("i hated it."), exclamations and neutral filler ("it is
about a young nurse who moves to paris."). The sentiment words all come from VADER's human-rated lexicon, so the
ground-truth reward (VADER's compound score of a completion) is a real function of the text that responds to the
words, their intensifiers, negations and "but" clauses, the way VADER reads any text.

Limits, said plainly in the report: the vocabulary is small (~200 words) and the grammar simple, so the model learns it
in a minute, and a positive review is one word choice away from a negative one; real reviews are far more varied.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

POSITIVE = ("great", "good", "wonderful", "brilliant", "beautiful", "funny", "fun", "charming", "excellent", "clever",
            "lovely", "amazing", "perfect", "fantastic", "enjoyable", "sweet", "fresh", "smart")
NEGATIVE = ("bad", "boring", "awful", "terrible", "dull", "weak", "stupid", "ugly", "painful", "poor", "horrible",
            "annoying", "messy", "tired", "sad", "lame")
NEUTRAL_ADJ = ("long", "short", "slow", "quiet", "simple", "predictable", "familiar", "loud", "dark", "old-fashioned")
ASPECTS = ("acting", "plot", "story", "music", "ending", "script", "cast", "dialogue", "camera work", "lead actor",
           "villain", "pacing", "soundtrack", "first half", "final scene", "humor", "direction")
FILMS = ("film", "movie", "story", "comedy", "drama", "thriller", "sequel")
DEGREES = ("", "", "", "very ", "really ", "so ", "quite ", "kind of ", "a bit ", "truly ")
LIKE = ("loved", "enjoyed", "liked", "adored")
DISLIKE = ("hated", "disliked", "regretted")
OBJECTS = ("it", "this film", "this movie", "the ending", "every minute", "the cast", "the whole thing")
PEOPLE = ("young nurse", "retired cop", "lonely farmer", "teacher", "family", "small-town lawyer", "boxer", "chef",
          "group of friends", "soldier", "journalist")
ACTIONS = ("moves to paris", "returns home", "finds a map", "starts a band", "loses a bet", "opens a restaurant",
           "runs for mayor", "takes a long trip", "meets an old friend")
WHEN = ("last week", "on a plane", "with my family", "at the cinema", "on a rainy sunday", "twice", "last night")
OPENERS = ("i watched it", "i saw it", "we rented it", "i went to see it")


@dataclass(frozen=True)
class Review:
    """One generated review and the hidden tone it was written with (kept for the report, never for the reward)."""

    text: str
    tone: float


def _adj(rng: random.Random, tone: float) -> str:
    return rng.choice(POSITIVE if rng.random() < tone else NEGATIVE)


def _judgment(rng: random.Random, tone: float) -> str:
    verb = rng.choice(("was", "is"))
    return f"the {rng.choice(ASPECTS)} {verb} {rng.choice(DEGREES)}{_adj(rng, tone)}."


def _negated(rng: random.Random, tone: float) -> str:
    # "not good" reads negative: pick the adjective with the opposite tone so the sentence keeps the review's.
    return f"the {rng.choice(ASPECTS)} was not {_adj(rng, 1.0 - tone)}."


def _contrast(rng: random.Random, tone: float) -> str:
    first, second = rng.sample(ASPECTS, 2)
    return f"the {first} was {_adj(rng, 1.0 - tone)}, but the {second} was {rng.choice(DEGREES)}{_adj(rng, tone)}."


def _opinion(rng: random.Random, tone: float) -> str:
    verb = rng.choice(LIKE if rng.random() < tone else DISLIKE)
    return f"i {verb} {rng.choice(OBJECTS)}."


def _film(rng: random.Random, tone: float) -> str:
    if rng.random() < 0.5:
        return f"it is a {rng.choice(DEGREES)}{_adj(rng, tone)} {rng.choice(FILMS)}."
    return f"what a {_adj(rng, tone)} {rng.choice(FILMS)}!"


def _recommend(rng: random.Random, tone: float) -> str:
    return "i would recommend it." if rng.random() < tone else "i would not recommend it."


def _neutral(rng: random.Random, tone: float) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"it is about a {rng.choice(PEOPLE)} who {rng.choice(ACTIONS)}."
    if kind == 1:
        return f"{rng.choice(OPENERS)} {rng.choice(WHEN)}."
    if kind == 2:
        return f"the {rng.choice(ASPECTS)} was {rng.choice(NEUTRAL_ADJ)}."
    return f"it runs about {rng.choice(('ninety minutes', 'two hours', 'three hours'))}."


SENTENCES: tuple[tuple[Callable[[random.Random, float], str], float], ...] = (
    (_judgment, 4.0), (_negated, 1.0), (_contrast, 1.5), (_opinion, 1.5), (_film, 1.5), (_recommend, 0.7),
    (_neutral, 2.5),
)


def review(rng: random.Random) -> Review:
    """One review of 2–3 sentences with a uniformly drawn tone."""
    tone = rng.random()
    makers, weights = zip(*SENTENCES, strict=True)
    count = rng.choice((2, 2, 3))
    return Review(" ".join(make(rng, tone) for make in rng.choices(makers, weights, k=count)), tone)


def corpus(num: int, seed: int) -> list[Review]:
    rng = random.Random(seed)
    return [review(rng) for _ in range(num)]


def split_prefix(text: str, rng: random.Random, min_words: int = 2, max_words: int = 5) -> tuple[str, str]:
    """(prompt, continuation): the first 2–5 words, as the paper prompts with IMDb prefixes of a few tokens.

    The continuation keeps its leading space, so prompt + continuation is the review again.
    """
    words = text.split(" ")
    cut = rng.randint(min_words, min(max_words, len(words) - 1))
    return " ".join(words[:cut]), " " + " ".join(words[cut:])
