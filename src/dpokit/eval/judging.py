"""`load_judge`: a judge from its settings, whichever kind `judge.source` names (judges.py has the kinds' shared
vocabulary; judge_openai.py and judge_lm.py the LLM judges)."""

from __future__ import annotations

from dpokit.eval.judge_lm import LocalLMJudge
from dpokit.eval.judge_openai import OpenAIJudge
from dpokit.eval.judges import Judge, JudgeConfig, RewardJudge
from dpokit.rewards.sources import RewardConfig


def load_judge(config: JudgeConfig, cache: str | None = None) -> Judge:
    """The judge, ready to ask (a model is loaded now: its errors surface before any sampling).

    Args:
        config: which judge and how it is asked (`judge.*`).
        cache: openai: where answers are cached when `config.cache` is unset.
    """
    config.check()
    if config.kind == "openai":
        return OpenAIJudge(config, config.cache or cache)
    if config.kind == "lm":
        return LocalLMJudge(config)
    return RewardJudge(RewardConfig(config.source, config.label, config.text).load())
