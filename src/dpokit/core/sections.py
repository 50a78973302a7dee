"""Settings sections that several commands share, each defined once: the model, its LoRA adapter, checkpoints,
tracking, and the fields of sampling.

`ModelConfig` is `model.*` of train/sft/eval/rm/ppo/online and what every loader takes. `Tracking` and
`Checkpoints` are base classes: their keys sit where each command has always had them (`train.report_to` for
train/sft/rm, `report_to` at the top level of ppo and winrate). `sampling(name, default)` declares one of the
sampling keys (`max_new_tokens`, `temperature`, `top_p`, `seed`, `chat`, `batch_size`) with its one help text and
range; commands differ only in defaults. `grad_clip_setting` declares the key ppo shares with `train.*`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from dpokit.core.errors import ConfigError
from dpokit.core.settings import setting
from dpokit.core.validation import check_tree


def grad_clip_setting(default: float, **bounds: float) -> Any:
    """`max_grad_norm` of every loop that steps an optimizer (train.*, ppo; ppo refuses 0, train reads it as no
    clipping)."""
    return setting(default, "clip the global gradient norm; null: no clipping", **bounds)


@dataclass
class Checkpoints:
    """The checkpoint keys every training loop shares (trainer/runtime.py): a base class of `TrainConfig`
    (`train.keep_checkpoints`, `train.resume`) and `PPOConfig` (top level)."""

    keep_checkpoints: int = setting(2, "keep the newest N checkpoints under output_dir/checkpoints", ge=0)
    resume: str | None = setting(None, "\"latest\" (newest checkpoint in output_dir) or a checkpoint directory")


@dataclass
class LoraConfig:
    enabled: bool = setting(False, "train a LoRA adapter instead of all weights; the reference is then the adapter "
                                   "switched off")
    r: int = setting(16, "adapter rank")
    alpha: int = setting(32, "scaling numerator (scale = alpha / r)")
    dropout: float = setting(0.0, "dropout on the adapter input")
    target_modules: str = setting("all-linear", "peft target_modules: \"all-linear\" or a comma-separated list of "
                                                "module names")


@dataclass
class ModelConfig:
    name_or_path: str = setting("", "hub name or local directory of the policy's starting weights; or a .gguf file, "
                                    "or a packaged model's short name (smollm2-135m-instruct)")
    gguf_file: str | None = setting(None, "a .gguf file in the name_or_path directory or hub repo to load weights "
                                          "(and, with no tokenizer set, the tokenizer) from")
    tokenizer: str | None = setting(None, "defaults to name_or_path")
    dtype: str = setting("float32", "weights dtype: float32 | bfloat16", choices=("float32", "bfloat16"))
    trust_remote_code: bool = setting(False, "run code shipped with the model; off unless you trust its source")
    allow_pickle: bool = setting(False, "accept pickle (.bin) checkpoints; by default only safetensors load")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward: less memory, one extra "
                                                  "forward of compute")
    disable_dropout: bool = setting(True, "DPO's log-ratios assume deterministic forwards; dropout adds noise to "
                                          "them")
    lora: LoraConfig = field(default_factory=LoraConfig)


# tracker -> the modules it needs (any one of them); its extra has the tracker's name
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
TRACKERS = tuple(PACKAGES)


def check_report_to(key: str, names: list[str]) -> None:
    """Refuses an unknown tracker, or one whose package is not installed, naming the config key and the extra.

    Raises:
        ConfigError: e.g. "train.report_to: wandb is not installed: pip install 'dpokit[wandb]'".
    """
    for name in names:
        if name not in PACKAGES:
            raise ConfigError(f"config key '{key}': unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if not any(importlib.util.find_spec(module) for module in PACKAGES[name]):  # found, not imported (slow)
            raise ConfigError(f"config key '{key}': {name} is not installed: pip install 'dpokit[{name}]'")


@dataclass
class Tracking:
    """Which experiment trackers, and where (trainer/trackers.py opens them). A base class of each command's
    settings that tracks: `TrainConfig` (keys `train.report_to`, ...), `PPOConfig` and `WinrateConfig` (top level)."""

    report_to: list[str] = setting(help="experiment trackers, each an extra (pip install 'dpokit[wandb]'): a list of "
                                        "tensorboard, wandb, mlflow, e.g. [tensorboard,wandb]; all write files only "
                                        "(W&B offline: `wandb sync` later)", factory=list)
    project: str = setting("dpokit", "tracker project: W&B project, MLflow experiment")
    run_name: str = setting("", "tracker run name; empty: the output directory's name")
    tracking_dir: str = setting("", "where tracker files go; empty: <output_dir>/tracking")

    @classmethod
    def of(cls, settings: Tracking) -> Tracking:
        """The tracking part alone of any settings that extend this class."""
        return cls(list(settings.report_to), settings.project, settings.run_name, settings.tracking_dir)


# key -> (help, range) of every sampling setting; a command declares the ones it has with `sampling`
SAMPLING: dict[str, tuple[str, dict[str, float]]] = {
    "max_new_tokens": ("completion budget in tokens (a completion that reaches it has no end of turn)", {"gt": 0}),
    "temperature": ("sampling temperature; 1 samples the model's own distribution, 0 is greedy", {"ge": 0}),
    "top_p": ("nucleus sampling mass; 1 keeps the whole distribution", {"gt": 0, "le": 1}),
    "seed": ("seeds every draw: the same seed gives the same samples", {}),
    "chat": ("render prompts with the model's chat template (a prompt is one user message) and stop at its end of "
             "turn; null: when the model has a template", {}),
    "batch_size": ("prompts (sequences) per generate call", {"gt": 0}),
}


def sampling(name: str, default: Any, help: str = "") -> Any:
    """The field of the sampling setting `name` with its shared help (`help`, if given, is appended) and range."""
    text, bounds = SAMPLING[name]
    return setting(default, f"{text}; {help}" if help else text, **bounds)


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn (lm/sampling.py draws them); every command that samples builds one from its own
    keys, declared with `sampling`."""

    max_new_tokens: int = sampling("max_new_tokens", 24)
    temperature: float = sampling("temperature", 1.0)
    top_p: float = sampling("top_p", 1.0)
    batch_size: int = sampling("batch_size", 128)

    def check(self) -> None:
        """Each value within its range, in the one wording of every setting's range."""
        check_tree(self)
