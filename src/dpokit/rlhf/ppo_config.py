"""`dpokit ppo`'s settings: one dataclass read by the loader every command uses (`core.settings.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import check_model_dir
from dpokit.core.paths import check_local_path
from dpokit.core.sections import (
    Checkpoints,
    ModelConfig,
    Tracking,
    check_report_to,
    grad_clip_setting,
    sampling,
)
from dpokit.core.settings import setting
from dpokit.rewards.sources import RewardConfig


@dataclass
class PPOConfig(Checkpoints, Tracking):
    """PPO-RLHF (Ziegler et al. 2019): every key's help is what `dpokit ppo --help` prints; the tracking keys
    (`report_to`, ...) come from `Tracking`, the sampling ones are declared by `sampling`, the `model.*` section
    (weights, dtype, LoRA) is `dpokit train`'s."""

    model: ModelConfig = field(default_factory=ModelConfig)  # model.name_or_path (required): πref and the policy's
    # starting weights; model.lora.*: train adapters (the value head in full), πref is then the adapter switched off
    prompts: str = setting("", "required: .txt with one prompt per line, or JSONL/JSON/Parquet/CSV with a "
                               "\"prompt\" field (a string or {role, content} messages)")
    reward: RewardConfig = field(default_factory=RewardConfig)
    chat: bool | None = sampling("chat", None)
    output_dir: str = setting("", "required: run directory: policy + tokenizer (a LoRA run: merged, plus adapter/), "
                                  "value_head.safetensors, metrics.jsonl, config.yaml, checkpoints/")
    fsdp: bool = setting(False, "shard weights, gradients and optimizer state over the processes (FSDP2 full "
                                "shard; or an FSDP accelerate config), as train.fsdp does; rollouts are sampled "
                                "through the sharded policy, every process in step")
    seed: int = setting(0, "seeds the prompt order, every rollout draw and the minibatch order")
    iterations: int = setting(100, "rollout-then-optimise iterations", gt=0)
    rollout_batch_size: int = setting(64, "responses sampled per iteration (over all processes)", gt=0)
    minibatch_size: int = setting(16, "responses per optimizer step (over all processes); must divide "
                                      "rollout_batch_size", gt=0)
    ppo_epochs: int = setting(4, "passes over each rollout batch, reshuffled into minibatches each time", gt=0)
    max_new_tokens: int = sampling("max_new_tokens", 24)
    lr: float = setting(1e-5, "Adam learning rate (constant)", gt=0)
    max_grad_norm: float | None = grad_clip_setting(1.0, gt=0)
    clip_range: float = setting(0.2, "ε of the clipped surrogate: the probability ratio is clipped to [1-ε, 1+ε]",
                                gt=0)
    value_clip_range: float | None = setting(0.2, "ε_v: a new value may move at most this far from the rollout's "
                                                  "(reward units); null: no value clipping", gt=0)
    vf_coef: float = setting(0.1, "weight of the value loss in policy loss + vf_coef * value loss", ge=0)
    gamma: float = setting(1.0, "discount γ (1: the episode is one response)", ge=0, le=1)
    lam: float = setting(0.95, "GAE's λ (1: Monte Carlo returns, 0: one-step TD)", ge=0, le=1)
    whiten_advantages: bool = setting(True, "normalise advantages to mean 0, std 1 over each rollout batch")
    beta: float = setting(0.05, "KL coefficient β of the per-token penalty −β(log π − log πref); the initial value "
                                "when kl_target is set", gt=0)
    kl_target: float | None = setting(None, "adaptive KL (Ziegler et al.): β moves so the sequence KL tracks this "
                                            "(nats); null: fixed β", gt=0)
    kl_horizon: int = setting(10000, "adaptive KL: samples over which β may change by at most 20%", gt=0)
    sample_batch_size: int = sampling("batch_size", 64)
    forward_batch_size: int = setting(16, "rows per no-grad forward (old, reference log-probs and values)", gt=0)
    log_every: int = setting(1, "a progress line every N iterations (metrics.jsonl gets every iteration)", gt=0)
    progress: bool = setting(True, "show progress")
    save: bool = setting(True, "save the final policy + tokenizer + value head to output_dir")
    save_every: int = setting(0, "write a resumable checkpoint every N iterations (0: only on SIGTERM/SIGINT)", ge=0)

    def check(self) -> None:
        """The batch sizes' rule, trackers and paths (`validate` runs this after the types and ranges)."""
        if self.rollout_batch_size % self.minibatch_size:
            raise ConfigError(f"minibatch_size ({self.minibatch_size}) must divide rollout_batch_size "
                              f"({self.rollout_batch_size})")
        check_report_to("report_to", self.report_to)
        check_local_path("prompts", self.prompts)
        check_model_dir("model.name_or_path", self.model.name_or_path, self.model.gguf_file)
