"""dpokit: Direct Preference Optimization for causal language models (Rafailov et al., 2023).

The Python API (`dpokit.api`; README, "Python API"):

    import dpokit

    cfg = dpokit.Config()
    cfg.model.name_or_path, cfg.data.path, cfg.train.output_dir = "runs/sft", "pairs.jsonl", "runs/dpo"
    summary = dpokit.train(cfg)
"""

from __future__ import annotations

from dpokit.api import bon, evaluate, generate, online, perplexity, ppo, rm, sft, train, winrate
from dpokit.core.errors import ConfigError, DataError, DpokitError
from dpokit.eval.judges import JudgeConfig
from dpokit.eval.winrate_config import WinrateConfig
from dpokit.rlhf.bon_config import BonConfig
from dpokit.rlhf.online_config import OnlineConfig
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.trainer.config import Config

__version__ = "0.1.0"
__all__ = [
    "BonConfig", "Config", "ConfigError", "DataError", "DpokitError", "JudgeConfig", "OnlineConfig", "PPOConfig",
    "RewardModelConfig", "WinrateConfig", "__version__", "bon", "evaluate", "generate", "online", "perplexity", "ppo",
    "rm", "sft", "train", "winrate",
]
