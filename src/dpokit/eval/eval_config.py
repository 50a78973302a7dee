"""`dpokit eval`'s settings: `dpokit train`'s model, reference, data and loss sections (what the preference metrics
are computed with), the held-out text of `perplexity.*`, and where the JSON goes. Light to import: `--help`."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.core.settings import setting
from dpokit.data.config import DataConfig
from dpokit.losses import objective_from_config
from dpokit.trainer.config import Config, LossConfig, ReferenceConfig, TrainConfig


@dataclass
class EvalData(DataConfig):
    """`data.*` of `dpokit train`, with eval's own default length (also the window of the perplexity)."""

    path: str = setting("", "preference data: JSONL/JSON/Parquet/CSV file, or a `datasets` name or directory; every "
                            "example is scored, in file order (optional with perplexity.sources)")
    max_length: int = setting(1024, "prompt + response tokens per sequence; also the window of the perplexity", gt=0)


@dataclass
class PerplexityConfig:
    """`perplexity.*`: held-out text scored by the reference (before) and the policy (after)."""

    sources: list[str] = setting(factory=list, help="held-out text: a .txt file (one document per line), or a data "
                                                    "file or `datasets` name with a text field; --perplexity, "
                                                    "repeatable")
    field: str = setting("text", "the record field holding the text, a string or {role, content} messages")
    limit: int | None = setting(None, "score at most this many documents per source", gt=0)
    split: str = setting("train", "the split of a `datasets` source")


@dataclass
class EvalConfig:
    """`dpokit eval`: preference metrics of `model` (the policy) against `reference` on `data.path`, and/or the
    perplexity of held-out text before (reference) and after (policy)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: EvalData = field(default_factory=EvalData)
    loss: LossConfig = field(default_factory=LossConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    batch_size: int = setting(8, "pairs (preference metrics) or windows (perplexity) per forward", gt=0)
    output: str = setting("", "also write the metrics JSON to this file (it is always printed)")

    def as_train_config(self) -> Config:
        """These settings as the `dpokit train` config the preference metrics are computed from (sections shared):
        file order, no shuffling, no progress bars."""
        train = TrainConfig(batch_size=self.batch_size, shuffle=False, progress=False)
        return Config(model=self.model, reference=self.reference, data=self.data, loss=self.loss, train=train)

    def check(self) -> None:
        """Something to evaluate, a reference where the loss needs one, then `dpokit train`'s checks."""
        if not self.data.path and not self.perplexity.sources:
            raise ConfigError("nothing to evaluate: give --data (preference metrics) and/or --perplexity (held-out "
                              "text)")
        if self.data.eval_path or self.data.eval_fraction:
            raise ConfigError("data.eval_path / data.eval_fraction: dpokit eval scores every example of data.path")
        self.as_train_config().check()
        objective, _ = objective_from_config(self.loss)
        if self.data.path and objective.needs_reference and not self.reference.name_or_path:
            raise ConfigError(f"loss '{objective}' compares against a reference: pass --reference (or "
                              "loss.reference_free=true)")
