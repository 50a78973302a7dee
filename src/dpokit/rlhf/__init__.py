"""The RLHF pipeline DPO replaces, its baselines, and on-policy DPO, built from the layers below (never copying them).

    reward_config.py  `dpokit rm`'s settings
    reward_train.py   training a Bradley–Terry reward model through the DPO trainer's loop
    bon_config.py     `dpokit bon`'s settings
    bon.py            Best-of-N sampling and its analytic KL
    ppo_config.py     `dpokit ppo`'s settings
    ppo.py            PPO's pure pieces: the clipped losses, GAE, the KL controllers
    rollout.py        rollouts: the actor-critic, πref for PPO, per-token outputs, advantages
    ppo_trainer.py    the PPO loop
    online_config.py  `dpokit online`'s settings
    online.py         on-policy DPO: rounds of sampling from the current policy, labelling, training
"""
