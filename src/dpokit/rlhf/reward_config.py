"""`dpokit rm`'s settings: the sections of `dpokit train` that apply to a reward model (light to import: `--help`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.data.config import DataConfig
from dpokit.trainer.config import Config, LossConfig, ReferenceConfig, TrainConfig


@dataclass
class RewardModelConfig:
    """`dpokit rm`: `dpokit train`'s model, data and train sections (a reward model has no loss or reference to set).

    `model.name_or_path` names the starting weights (a causal LM: its backbone is kept and a new scalar head added;
    or a reward model to train further).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_train_config(self) -> Config:
        """These settings as a `dpokit train` config, whose checks and data pipeline they go through: the loss is
        Plackett–Luce on the rewards at β = 1 (Bradley–Terry for pairs), reference-free. Sections are shared."""
        return Config(model=self.model, data=self.data, train=self.train, reference=ReferenceConfig(mode="none"),
                      loss=LossConfig(name="plackett_luce", beta=1.0, reference_free=True))

    def check(self) -> None:
        """`dpokit train`'s checks of these sections, then what a reward model cannot learn from."""
        self.as_train_config().check()
        if self.data.format == "unpaired":
            raise ConfigError("data.format=unpaired: a reward model learns from preferences (pairs or ranked lists)")
