"""`dpokit train` / `sft` / `eval`'s settings: the sections `model`, `reference`, `data`, `loss`, `train`, and
`build_config`. The loader and the checks every command shares are in core/settings.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import check_model_dir
from dpokit.core.paths import check_local_path
from dpokit.core.sections import Checkpoints, ModelConfig, Tracking, check_report_to, grad_clip_setting
from dpokit.core.settings import flatten, load, setting, to_dict
from dpokit.data.config import DataConfig
from dpokit.losses import LossParams, objective_from_config


@dataclass
class SyncConfig:
    """`reference.sync`: TR-DPO's reference updates (`trainer.sync`)."""

    mode: str = setting("none", "TR-DPO: none | soft (πref ← α·πθ + (1−α)·πref) | hard (πref ← πθ), every "
                                "reference.sync.every optimizer steps", choices=("none", "soft", "hard"))
    alpha: float = setting(0.6, "α of the soft update (the TR-DPO paper's 0.6)", gt=0, le=1)
    every: int = setting(512, "τ: optimizer steps between updates (the TR-DPO paper's 512)", gt=0)


@dataclass
class ReferenceConfig:
    mode: str = setting("auto", "auto (adapter with LoRA, else copy) | copy | adapter | precomputed | none",
                        choices=("auto", "copy", "adapter", "precomputed", "none"))
    name_or_path: str | None = setting(None, "reference weights; default: the policy's starting weights")
    cache_dir: str = setting("", "where precomputed reference log-probs are kept; empty: $DPOKIT_CACHE/reference, by "
                                 "default ~/.cache/dpokit/reference")
    sync: SyncConfig = field(default_factory=SyncConfig)


@dataclass
class LossConfig(LossParams):
    """Which loss, plus its hyper-parameters: the fields of `losses.LossParams`, defined (with help) there once;
    `losses.objective_from_config` turns this section into the objective and its validated parameters."""

    name: str = setting("sigmoid", "a loss or a weighted sum, e.g. \"sigmoid\", \"ipo\", \"sigmoid + 0.5*sft\" "
                                   "(RPO); losses are listed after the keys")
    reference_free: bool = setting(False, "treat log πref as 0 (no reference model)")


@dataclass
class TrainConfig(Checkpoints, Tracking):
    """`train.*`: the optimisation, batching, evaluation, saving and (from `Tracking`) tracking keys."""

    output_dir: str = setting("", "run directory: model, tokenizer, metrics.jsonl, config.yaml, summary.json")
    seed: int = setting(0, "seeds weights init (LoRA), data order and the eval split")
    batch_size: int = setting(8, "examples (pairs) per micro-batch", gt=0)
    grad_accum: int = setting(1, "micro-batches per optimizer step; pairs per step = batch_size * grad_accum", gt=0)
    max_steps: int | None = setting(None, "optimizer steps; overrides epochs when set", gt=0)
    epochs: float = setting(1.0, "passes over the training data when max_steps is not set")
    lr: float = setting(1e-6, "peak learning rate (the DPO paper uses 1e-6 with batch 64)", gt=0)
    optimizer: str = setting("rmsprop", "rmsprop (the DPO paper's choice) | adamw (torch's fused kernel where the "
                             "parameters allow)", choices=("rmsprop", "adamw"))
    weight_decay: float = setting(0.0, "decoupled (AdamW) or L2 (RMSprop) weight decay", ge=0)
    warmup_steps: int = setting(0, "linear warmup from 0 to lr over this many optimizer steps", ge=0)
    schedule: str = setting("constant", "after warmup: constant | cosine (to 0 at the last step)",
                            choices=("constant", "cosine"))
    max_grad_norm: float | None = grad_clip_setting(10.0)
    precision: str = setting("fp32", "fp32 | bf16 (autocast; weights and optimizer state stay fp32)",
                             choices=("fp32", "bf16"))
    shuffle: bool = setting(True, "reshuffle training data each epoch (seeded)")
    length_bucketing: bool = setting(False, "batch examples of similar length together (deterministic under seed)")
    packing: bool = setting(True, "pack sequences into rows without padding; attention confined to each sequence")
    shared_prompt: bool = setting(True, "compute each prompt once for all of its responses")
    row_length: int | None = setting(None, "packed row capacity in tokens; null: data.max_length (or the longest "
                                           "example)", gt=0)
    attention: str = setting("dense", "packed/shared-prompt rows' attention: dense (a 4D mask, the reference path) | "
                                      "flex (FlexAttention block masks, no dense mask; EXPERIMENTAL: untested on CUDA "
                                      "so far, needs CUDA to train, transformers classes with FlexAttention only)",
                             choices=("dense", "flex"))
    logps_chunk_size: int = setting(1024, "response tokens per LM-head chunk (0: all at once); bounds logits memory",
                                    ge=0)
    fsdp: bool = setting(False, "with several processes: shard weights, grads, optimizer state, reference (FSDP2)")
    compile: bool = setting(False, "torch.compile each transformer block (policy and a frozen reference): the first "
                                   "batches compile (about 10-30 s on CPU, once more when packed shapes first change); "
                                   "on CPU 1.02x on SmolLM2 (docs/performance.md): meant for GPUs")
    eval_every: int = setting(0, "run held-out evaluation every N steps (0: only at the end, if there is eval data)",
                              ge=0)
    eval_batch_size: int | None = setting(None, "defaults to batch_size", gt=0)
    log_every: int = setting(1, "write a metrics line every N optimizer steps", gt=0)
    save: bool = setting(True, "save the final model + tokenizer to output_dir")
    save_every: int = setting(0, "write a resumable checkpoint every N steps (0: only when stopped by "
                                 "SIGTERM/SIGINT)", ge=0)
    progress: bool = setting(True, "show progress bars")


@dataclass
class Config:
    """`dpokit train` / `sft` / `eval`: one section per part of the run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Cross-field rules, the loss, and paths that must exist (`validate` runs this after the types, choices and
        each field's range)."""
        flat = flatten(to_dict(self))
        data = self.data
        if data.max_prompt_length is not None and data.max_prompt_length >= data.max_length:
            raise ConfigError(
                f"data.max_prompt_length ({data.max_prompt_length}) must be < data.max_length ({data.max_length}),"
                " or responses get no tokens"
            )
        if not 0.0 <= data.eval_fraction < 1.0:
            raise ConfigError(f"config key 'data.eval_fraction' must be in [0, 1), got {data.eval_fraction}")
        if self.train.max_steps is None and not self.train.epochs > 0:
            raise ConfigError(
                f"config key 'train.epochs' must be > 0 when train.max_steps is not set, got {self.train.epochs}"
            )
        objective_from_config(self.loss)  # the loss's own ranges (β > 0, ...) are checked there, once
        check_report_to("train.report_to", self.train.report_to)  # before any model loads
        for key in ("data.path", "data.eval_path"):
            check_local_path(key, flat[key])
        for key in ("model.name_or_path", "model.tokenizer", "reference.name_or_path"):
            check_model_dir(key, flat[key], self.model.gguf_file if key == "model.name_or_path" else None)


def build_config(yaml_path: str | None = None, *layers: dict[str, Any], base: Config | None = None) -> Config:
    """The train config: `base` (or the defaults), then the YAML file, then each layer of keys in order (`load`)."""
    return load(base or Config(), yaml_path, *layers)


