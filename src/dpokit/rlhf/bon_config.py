"""`dpokit bon`'s settings: one dataclass read by the loader every command uses (`core.settings.load`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import check_model_dir
from dpokit.core.sections import SamplingSettings, sampling
from dpokit.core.settings import setting
from dpokit.rewards.sources import RewardConfig


@dataclass
class BonConfig:
    """`dpokit bon`: each key's help is what `dpokit bon --help` prints."""

    model: str = setting("", "required: πref, any model source: a directory, hub name, .gguf file or packaged short "
                             "name (smollm2-135m-instruct)")
    gguf_file: str | None = setting(None, "a .gguf file inside the `model` directory or hub repo to load from")
    prompts: str = setting("", "required: .txt (one prompt per line), or JSONL/JSON/Parquet/CSV records with a "
                               "\"prompt\" field (a string or a list of {role, content} messages)")
    n: int = setting(16, "samples per prompt; the one with the highest reward is chosen (ties: the earliest)", gt=0)
    reward: RewardConfig = field(default_factory=RewardConfig)
    max_new_tokens: int = sampling("max_new_tokens", 64)
    temperature: float = setting(1.0, "1 samples πref itself, which best-of-N and its analytic KL assume; another "
                                      "value samples a tempered model, and the KL is then to that model")
    seed: int = sampling("seed", 0)
    batch_size: int = sampling("batch_size", 32)
    chat: bool | None = sampling("chat", None)
    output: str | None = setting(None, "write the JSONL here (one line per prompt); null: print it")

    def check(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"config key 'temperature' must be > 0 (0 is greedy: all n samples would be the "
                              f"same), got {self.temperature}")
        check_model_dir("model", self.model, self.gguf_file)  # the check `dpokit train` makes of its model

    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.max_new_tokens, self.temperature, 1.0, self.batch_size)
