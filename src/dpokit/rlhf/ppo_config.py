"""`dpokit ppo`'s settings: one dataclass read by the loader every command uses (`dpokit.trainer.config.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import check_model_dir
from dpokit.core.paths import check_local_path
from dpokit.core.settings import setting
from dpokit.rewards.sources import RewardConfig
from dpokit.trainer.trackers import HELP as TRACKING_HELP
from dpokit.trainer.trackers import check_report_to


@dataclass
class PPOConfig:
    """PPO-RLHF (Ziegler et al. 2019): every key's help is what `dpokit ppo --help` prints."""

    model: str = setting("", "required: πref and the policy's starting weights (a saved causal LM, hub name, .gguf "
                             "or packaged short name)")
    dtype: str = setting("float32", "weights dtype: float32 | bfloat16", choices=("float32", "bfloat16"))
    prompts: str = setting("", "required: .txt with one prompt per line, or JSONL/JSON/Parquet/CSV with a "
                               "\"prompt\" field (a string or {role, content} messages)")
    reward: RewardConfig = field(default_factory=RewardConfig)
    chat: bool | None = setting(None, "render prompts with the model's chat template and stop at its end of turn; "
                                      "null: when the model has a template")
    output_dir: str = setting("", "required: run directory: policy + tokenizer, value_head.safetensors, "
                                  "metrics.jsonl, config.yaml, checkpoints/")
    seed: int = setting(0, "seeds the prompt order, every rollout draw and the minibatch order")
    iterations: int = setting(100, "rollout-then-optimise iterations")
    rollout_batch_size: int = setting(64, "responses sampled per iteration (over all processes)")
    minibatch_size: int = setting(16, "responses per optimizer step (over all processes); must divide "
                                      "rollout_batch_size")
    ppo_epochs: int = setting(4, "passes over each rollout batch, reshuffled into minibatches each time")
    max_new_tokens: int = setting(24, "response budget in tokens (a response that reaches it has no eos)")
    lr: float = setting(1e-5, "Adam learning rate (constant)")
    max_grad_norm: float | None = setting(1.0, "clip the global gradient norm; null: no clipping")
    clip_range: float = setting(0.2, "ε of the clipped surrogate: the probability ratio is clipped to [1-ε, 1+ε]")
    value_clip_range: float | None = setting(0.2, "ε_v: a new value may move at most this far from the rollout's "
                                                  "(reward units); null: no value clipping")
    vf_coef: float = setting(0.1, "weight of the value loss in policy loss + vf_coef * value loss")
    gamma: float = setting(1.0, "discount γ (1: the episode is one response)")
    lam: float = setting(0.95, "GAE's λ (1: Monte Carlo returns, 0: one-step TD)")
    whiten_advantages: bool = setting(True, "normalise advantages to mean 0, std 1 over each rollout batch")
    beta: float = setting(0.05, "KL coefficient β of the per-token penalty −β(log π − log πref); the initial value "
                                "when kl_target is set")
    kl_target: float | None = setting(None, "adaptive KL (Ziegler et al.): β moves so the sequence KL tracks this "
                                            "(nats); null: fixed β")
    kl_horizon: int = setting(10000, "adaptive KL: samples over which β may change by at most 20%")
    sample_batch_size: int = setting(64, "prompts per generate call")
    forward_batch_size: int = setting(16, "rows per no-grad forward (old, reference log-probs and values)")
    log_every: int = setting(1, "a progress line every N iterations (metrics.jsonl gets every iteration)")
    progress: bool = setting(True, "show progress")
    save: bool = setting(True, "save the final policy + tokenizer + value head to output_dir")
    save_every: int = setting(0, "write a resumable checkpoint every N iterations (0: only on SIGTERM/SIGINT)")
    keep_checkpoints: int = setting(2, "keep the newest N checkpoints under output_dir/checkpoints")
    resume: str | None = setting(None, "\"latest\" (newest checkpoint in output_dir) or a checkpoint directory")
    report_to: list[str] = setting(help=TRACKING_HELP["report_to"], factory=list)
    project: str = setting("dpokit", TRACKING_HELP["project"])
    run_name: str = setting("", TRACKING_HELP["run_name"])
    tracking_dir: str = setting("", TRACKING_HELP["tracking_dir"])

    def check(self) -> None:
        """Ranges and paths (`config.validate` runs this after the types)."""
        for key in ("iterations", "rollout_batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens", "lr",
                    "clip_range", "beta", "kl_horizon", "sample_batch_size", "forward_batch_size", "log_every"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key '{key}' must be > 0, got {getattr(self, key)!r}")
        for key in ("vf_coef", "save_every", "keep_checkpoints"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {getattr(self, key)!r}")
        for key in ("value_clip_range", "kl_target", "max_grad_norm"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                raise ConfigError(f"config key '{key}' must be > 0 or null, got {getattr(self, key)!r}")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ConfigError(f"gamma and lam must be in [0, 1], got gamma={self.gamma}, lam={self.lam}")
        if self.rollout_batch_size % self.minibatch_size:
            raise ConfigError(f"minibatch_size ({self.minibatch_size}) must divide rollout_batch_size "
                              f"({self.rollout_batch_size})")
        check_report_to("report_to", self.report_to)
        check_local_path("prompts", self.prompts)
        check_model_dir("model", self.model)
