"""Evaluation with a ground-truth reward: sampling, sequence KL, rewards, and the DPO paper's reward–KL frontier.

    sampling.py         batched, seeded, KV-cached completions (exactly the model's distribution at temperature 1)
    kl.py               sequence KL(π‖πref) of sampled completions, summed exact per-token KLs
    perplexity.py       per-token NLL and perplexity of models on held-out text, before and after training
    rewards.py          VADER, your `module:function`, or a sequence-classification model
    preferences.py      K samples per prompt from πref, scored -> all pairs + ranked lists (the paper's recipe)
    frontier_config.py  what an experiment runs (YAML for `dpokit frontier`)
    frontier.py         the protocol: preferences -> every method's run, evaluated every N steps
    report.py           figures (plots.py), Markdown (report_markdown.py), JSON/CSV, console table
"""
