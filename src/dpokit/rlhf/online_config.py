"""`dpokit online`'s settings: the online keys, then `dpokit train`'s model, reference, loss and train sections."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.paths import check_local_path
from dpokit.core.sections import ModelConfig, check_report_to, sampling
from dpokit.core.settings import setting
from dpokit.data.config import DataConfig
from dpokit.eval.judges import JudgeConfig
from dpokit.rewards.preferences import LABELS
from dpokit.rewards.sources import RewardConfig
from dpokit.trainer.config import Config, LossConfig, ReferenceConfig, TrainConfig


@dataclass
class OnlineReferenceConfig(ReferenceConfig):
    """`reference.*` of `dpokit train`, plus which model the reference is as the rounds go."""

    update: str = setting("fixed", "fixed: the starting model in every round | round: each round's reference is "
                                   "the policy that round starts from", choices=("fixed", "round"))


@dataclass
class OnlineConfig:
    """`dpokit online`: sample K completions per prompt from the current policy, label them with a reward or a
    judge, train `steps_per_round` steps on them, repeat for `rounds` rounds."""

    prompts: str = setting("", "required: .txt (one prompt per line), or JSONL/JSON/Parquet/CSV/datasets records "
                               "with a \"prompt\" field (a string or {role, content} messages)")
    reward: RewardConfig = field(default_factory=RewardConfig)
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(source=""))
    samples_per_prompt: int = setting(4, "K completions sampled per prompt each round", ge=2)
    rounds: int = setting(3, "sample-label-train rounds", gt=0)
    prompts_per_round: int | None = setting(None, "prompts sampled each round, taken in order and wrapping around "
                                                  "(null: every prompt, every round)", gt=0)
    steps_per_round: int = setting(8, "optimizer steps on each round's data (1, with fresh prompts per round: the "
                                      "fully online variant)", gt=0)
    labels: str = setting("best_worst", "how the K scored completions become preferences: best_worst (one pair) | "
                                        "all_pairs | ranked (one K-list, for plackett_luce) | sampled (each pair's "
                                        "winner drawn with p = sigmoid(r_a - r_b))", choices=LABELS)
    temperature: float = sampling("temperature", 1.0)
    top_p: float = sampling("top_p", 1.0)
    max_new_tokens: int = sampling("max_new_tokens", 64)
    sample_batch_size: int = sampling("batch_size", 32)
    chat: bool | None = sampling("chat", None)
    max_length: int = setting(512, "prompt + response tokens per training sequence (data.max_length of each round)",
                              gt=0)
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: OnlineReferenceConfig = field(default_factory=OnlineReferenceConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def judged(self) -> bool:
        """Labels come from `judge.source` when it is set, else from `reward`."""
        return bool(self.judge.source)

    def round_config(self, model: str, reference: str | None, data: str, output_dir: str,
                     resume: str | None = None) -> Config:
        """The `dpokit train` config of one round: `steps_per_round` steps from `model` on the round's `data`,
        against `reference` (None: `model` itself); the online run tracks the rounds, so the round does not."""
        model_cfg = ModelConfig(**{**vars(self.model), "name_or_path": model})
        mode = self.reference.mode
        if mode == "auto" and self.model.lora.enabled and self.reference.update == "fixed":
            mode = "copy"  # the adapter switched off is the round's starting policy, not the starting model
        reference_cfg = ReferenceConfig(mode, reference, self.reference.cache_dir)
        train = TrainConfig(**{**vars(self.train), "output_dir": output_dir, "max_steps": self.steps_per_round,
                               "resume": resume, "report_to": []})
        return Config(model=model_cfg, reference=reference_cfg, loss=self.loss, train=train,
                      data=DataConfig(path=data, max_length=self.max_length, cache=False))  # seen once

    def check(self) -> None:
        """What a round's `dpokit train` checks (its loss, model, paths), then what online training adds."""
        self.round_config(self.model.name_or_path, None, "", self.train.output_dir).check()
        check_report_to("train.report_to", self.train.report_to)  # the rounds do not track; the online run does
        check_local_path("prompts", self.prompts)
        if self.judged:
            self.judge.check()
            if self.labels == "sampled":
                raise ConfigError("labels=sampled draws each pair's winner from a reward difference; a judge gives "
                                  "no reward scale: use a reward, or labels best_worst / all_pairs / ranked")
        if self.reference.mode == "adapter" and self.reference.update == "fixed" and self.rounds > 1:
            raise ConfigError("reference.mode=adapter with reference.update=fixed: from round 2 on, the adapter "
                              "switched off is the round's starting policy, not the starting model; use "
                              "reference.update=round, or reference.mode=copy")
        if self.train.resume not in (None, "latest"):
            raise ConfigError(f"train.resume={self.train.resume!r}: dpokit online continues the run its output "
                              "directory holds (--resume, i.e. \"latest\"); it takes no checkpoint path")
