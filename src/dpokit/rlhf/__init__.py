"""RLHF baselines of the DPO paper, built on dpokit's data, sampling, rewards and training glue: a reward model,
Best-of-N sampling and PPO (`ppo.py`: the pure pieces; `ppo_trainer.py`: the loop)."""
