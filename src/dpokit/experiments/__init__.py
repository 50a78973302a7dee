"""The paper's experiments as runnable protocols: built from every layer below, used by `dpokit frontier` and
`dpokit demo`.

    frontier_config.py    what a frontier runs (YAML for `dpokit frontier`) and the paper's method set
    frontier.py           the protocol: preferences -> every method's run, evaluated every N steps
    frontier_rlhf.py      its RL arms: a learned reward model, PPO, PPO-GT, Best-of-N
    frontier_online.py    its on-policy arm: dpokit online at the offline runs' reward-call and step budget
    frontier_eval.py      held-out evaluation (reward, KL) and what a run produces
    frontier_analysis.py  which family dominates where, with standard errors; best reward within KL budgets
    report.py             figures (plots.py), Markdown (report_markdown.py), JSON/CSV, the console table
    plots.py              the reward–KL frontier and training curves
    report_markdown.py    report.md
    demo.py               `dpokit demo`: the sentiment task on a tiny model trained from scratch
    demo_task.py          the demo's synthetic review corpus
    demo_hh.py            `dpokit demo --task hh`: the paper's dialogue protocol on SmolLM2-135M-Instruct
    demo_hh_sizes.py      its sizes (full, quick, gpu) and the full run's time estimate per stage
    demo_hh_data.py       its data: the HH pairs split, single-turn pairs held out
    demo_hh_train.py      its trained arms: reward models, Preferred-FT (πref), DPO, DPO from instruct, online DPO
    demo_hh_eval.py       its evaluation: judge agreement, win rates, Best-of-N, KL and implicit rewards vs πref
    demo_hh_report.py     its report
"""
