"""dpokit: Direct Preference Optimization for causal language models (Rafailov et al., 2023).

The Python API (`dpokit.api`; README, "Python API"):

    import dpokit

    cfg = dpokit.Config()
    cfg.model.name_or_path, cfg.data.path, cfg.train.output_dir = "runs/sft", "pairs.jsonl", "runs/dpo"
    summary = dpokit.train(cfg)
"""

from __future__ import annotations

import importlib

from dpokit.errors import ConfigError, DataError, DpokitError

# The subpackage dpokit.train is loaded before the function `train` is bound to this name: importing a submodule
# binds its name on the parent only when it first loads, so the function is not replaced later.
importlib.import_module("dpokit.train")

from dpokit.api import bon, evaluate, generate, perplexity, ppo, rm, sft, train, winrate  # noqa: E402
from dpokit.config import Config  # noqa: E402
from dpokit.eval.judges import JudgeConfig  # noqa: E402
from dpokit.eval.winrate_config import WinrateConfig  # noqa: E402
from dpokit.rlhf.bon import BonConfig  # noqa: E402
from dpokit.rlhf.ppo_config import PPOConfig  # noqa: E402
from dpokit.rlhf.reward_config import RewardModelConfig  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "BonConfig", "Config", "ConfigError", "DataError", "DpokitError", "JudgeConfig", "PPOConfig", "RewardModelConfig",
    "WinrateConfig", "__version__", "bon", "evaluate", "generate", "perplexity", "ppo", "rm", "sft", "train",
    "winrate",
]
