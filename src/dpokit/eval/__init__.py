"""Evaluation of trained policies: perplexity, judges and judged win rates.

    eval_config.py     `dpokit eval`'s settings: train's model, reference, data and loss sections, perplexity.*
    perplexity.py      per-token NLL and perplexity of models on held-out text, before and after training
    judges.py          the vocabulary of judging: Comparison, Judgment, JudgeConfig, combine, the reward judge
    judge_openai.py    an LLM judge behind an OpenAI-compatible chat API (both orders, retries, cache)
    judge_lm.py        a local chat model's p("A") vs p("B")
    judge_prompts.py   the DPO paper's judging prompts and answer parsing
    judging.py         `load_judge`: the judge a JudgeConfig names
    winrate_config.py  `dpokit winrate`'s settings and prompt sets
    winrate.py         sampling every model at every temperature, judged against the baseline; judge agreement
    winrate_report.py  winrate.json, comparisons.jsonl, winrate.png, winrate.md, the trackers
"""
