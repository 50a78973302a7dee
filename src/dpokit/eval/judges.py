"""Judges for win rates: which of two responses to a prompt is better, the model's or the baseline's.

Every judge has one method, `judge(comparisons) -> judgments`, one `Judgment` per `Comparison`, in order. Three kinds:

- a reward (`RewardJudge`, any `rewards.sources` source: vader, module:function, file.py:function, a sequence-
  classification model, a `dpokit rm` directory): the model wins when r(completion) > r(baseline); equal rewards tie.
  A reward scores each response alone, so the order the two are shown in cannot matter.
- an LLM behind an OpenAI-compatible chat API (`eval.judge_openai.OpenAIJudge`, "openai:MODEL"), asked with the DPO
  paper's judging prompts, and
- a local Hugging Face chat model (`eval.judge_lm.LocalLMJudge`, "lm:MODEL"): the probability of "A" against "B".

The last two are shown both orders, model first (A = model) and baseline first (A = baseline), to cancel position
bias: each order gives `p`, the judge's probability that the model's response is the better one (0 or 1 for a parsed
LLM answer, None for an answer that could not be parsed), and the verdict is the mean over the orders that gave one
(`combine`). An order that could not be parsed is counted (`Judgment.parsed`, the report's "unparsed"), never
dropped: with no parsed order at all the comparison is a tie.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from dpokit.core.errors import ConfigError
from dpokit.core.settings import setting
from dpokit.core.validation import check_tree
from dpokit.rewards.sources import Reward

TEMPLATES = ("dialogue", "summarization")
Verdict = Literal["model", "baseline", "tie"]
Prompt = str | list[dict]
SCORES: dict[str, float] = {"model": 1.0, "tie": 0.5, "baseline": 0.0}


@dataclass(frozen=True)
class Comparison:
    """One question for a judge: `completion` (the model's) against `baseline`, both answering `prompt`."""

    prompt: Prompt
    completion: str
    baseline: str


@dataclass(frozen=True)
class Order:
    """What a judge said with the two responses in one order.

    Attributes:
        model_first: True when the model's response was shown first (as "A").
        p: the judge's probability that the model's response is better; None when its answer could not be parsed.
        raw: the judge's own output (the LLM's text; the log-probabilities of "A" and "B"), kept for the record.
    """

    model_first: bool
    p: float | None
    raw: Any = None

    @property
    def picked_first(self) -> bool | None:
        """Whether the judge preferred the response shown first (None: unparsed, or no preference at p = 0.5)."""
        if self.p is None or self.p == 0.5:
            return None
        return (self.p > 0.5) == self.model_first


@dataclass(frozen=True)
class Judgment:
    """A judge's verdict on one comparison.

    Attributes:
        verdict: "model", "baseline" or "tie".
        orders: what the judge said in each order it was asked (empty for a reward judge).
        raw: the judge's raw output as JSON-ready data (for a reward: both rewards).
    """

    verdict: Verdict
    orders: tuple[Order, ...] = ()
    raw: Any = None

    @property
    def score(self) -> float:
        """1 for a model win, 0.5 for a tie, 0 for a loss: win rates average this."""
        return SCORES[self.verdict]

    @property
    def parsed(self) -> bool:
        """False when some order's answer could not be parsed."""
        return all(order.p is not None for order in self.orders)

    @property
    def position_biased(self) -> bool | None:
        """True when the judge picked the same position in both orders (its verdict flipped with the order); None
        unless both orders gave a preference."""
        picks = [order.picked_first for order in self.orders]
        if len(picks) != 2 or None in picks:
            return None
        return picks[0] == picks[1]


class Judge(Protocol):
    """Anything with a `name` and `judge(comparisons) -> judgments` (one per comparison, in order)."""

    name: str

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]: ...


def verdict_of(p: float) -> Verdict:
    """The verdict for a probability that the model's response is better.

    >>> verdict_of(0.75), verdict_of(0.5), verdict_of(0.0)
    ('model', 'tie', 'baseline')
    """
    return "model" if p > 0.5 else "baseline" if p < 0.5 else "tie"


def combine(orders: Sequence[Order], raw: Any = None) -> Judgment:
    """One judgment from the orders a pairwise judge was asked in: the mean `p` of the parsed orders decides; none
    parsed is a tie. An LLM that says "A" in both orders (position bias) so ties.

    >>> combine([Order(True, 1.0), Order(False, 0.0)]).verdict   # picked A both times: no preference
    'tie'
    >>> combine([Order(True, 1.0), Order(False, None)]).verdict  # one parsed order decides
    'model'
    """
    parsed = [order.p for order in orders if order.p is not None]
    verdict = verdict_of(sum(parsed) / len(parsed)) if parsed else "tie"
    return Judgment(verdict, tuple(orders), raw)


@dataclass
class RewardJudge:
    """A reward as a judge: r(completion) > r(baseline) is a model win, equal rewards a tie.

    Each distinct (prompt, response) is scored once per judge and remembered: a baseline response faces every model
    at every temperature but costs one forward of a reward model, and equal texts get exactly equal rewards (a tie),
    whatever batch they were scored in.

    Args:
        reward: any `rewards.sources.Reward`, called as reward(prompts, responses).
    """

    reward: Reward
    name: str = field(init=False)
    _scores: dict[tuple[str, str], float] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.name = f"reward {self.reward.name}"

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgment]:
        pairs = [(c.prompt, text) for c in comparisons for text in (c.completion, c.baseline)]
        new = {_key(p, t): (p, t) for p, t in pairs if _key(p, t) not in self._scores}
        if new:  # one call for everything unseen: a model-backed reward batches them together
            prompts, texts = zip(*new.values(), strict=True)
            self._scores.update(zip(new, self.reward(list(prompts), list(texts)), strict=True))
        out = []
        for c in comparisons:
            m, b = self._scores[_key(c.prompt, c.completion)], self._scores[_key(c.prompt, c.baseline)]
            out.append(Judgment("model" if m > b else "baseline" if m < b else "tie",
                                raw={"model_reward": m, "baseline_reward": b}))
        return out


def _key(prompt: Prompt, text: str) -> tuple[str, str]:
    return (prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True), text)


@dataclass
class JudgeConfig:
    """Which judge decides, and how it is asked: a config section of `dpokit winrate` (keys `judge.*`)."""

    source: str = setting("vader", "openai:MODEL (an OpenAI-compatible chat API) | lm:MODEL (a local Hugging Face "
                                   "chat model: log-probability of A vs B) | any reward source: vader, "
                                   "module:function, file.py:function, a sequence-classification model directory "
                                   "(dpokit rm's included)")
    label: str | int | None = setting(None, "reward judges with a classifier: the label whose logit is the reward")
    text: str = setting("completion", "reward judges: what is scored: completion | full (prompt + response)",
                        choices=("completion", "full"))
    template: str = setting("dialogue", "LLM judges: the judging prompt: dialogue | summarization (the DPO paper's, "
                                        "appendix C.2) | a text file with {prompt}, {a} and {b} in it, ending in an "
                                        "answer that names A or B")
    base_url: str | None = setting(None, "openai: the API's base URL (default: $OPENAI_BASE_URL, else OpenAI's)")
    api_key_env: str = setting("OPENAI_API_KEY", "openai: the environment variable that holds the API key")
    temperature: float | None = setting(0.0, "openai: sampling temperature of the judge's answer; null: not sent "
                                             "(reasoning models take only their default)")
    max_tokens: int = setting(256, "openai: answer budget in tokens (a reasoning model's reasoning counts too)",
                              gt=0)
    max_tokens_param: str = setting("auto", "openai: the request field max_tokens is sent as: max_tokens | "
                                            "max_completion_tokens (what reasoning models such as o1, o3, gpt-5 "
                                            "take) | auto: max_tokens until the API refuses it as unsupported, "
                                            "then max_completion_tokens for the rest of the run",
                                    choices=("auto", "max_tokens", "max_completion_tokens"))
    concurrency: int = setting(8, "openai: requests in flight at once", gt=0)
    max_retries: int = setting(5, "openai: retries of a failed request (rate limit, server error, timeout), with "
                                  "exponential backoff", ge=0)
    timeout: float = setting(60.0, "openai: seconds to wait for one answer")
    cache: str | None = setting(None, "openai: JSON-lines cache of answers (default: judge_cache.jsonl in the "
                                      "output directory); a rerun asks only what is not in it")
    batch_size: int = setting(8, "lm: comparisons per forward pass", gt=0)

    @property
    def kind(self) -> str:
        """"openai", "lm" or "reward", from the source's prefix."""
        prefix = self.source.partition(":")[0]
        return prefix if prefix in ("openai", "lm") and ":" in self.source else "reward"

    def check(self) -> None:
        """The source names a model where it must; each value within its range (also for a judge built in
        Python, which `validate` never saw)."""
        check_tree(self, "judge.")
        if self.kind != "reward" and not self.source.partition(":")[2].strip():
            raise ConfigError(f"judge.source {self.source!r} names no model: write {self.kind}:MODEL")
