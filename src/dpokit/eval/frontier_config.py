"""What a reward–KL frontier experiment runs: the reference model, prompts, methods and shared training settings.

`dpokit frontier --config frontier.yaml` reads a `FrontierFile` (its keys and help: `dpokit frontier --help`) with the
loader every command uses (`dpokit.config.load`); `FrontierFile.experiment()` reads the prompts and gives the
`FrontierConfig` that `frontier.run_frontier` runs. The demo builds a `FrontierConfig` directly.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, fields
from typing import Any

from dpokit import config as config_io
from dpokit.config import setting
from dpokit.data.prompts import read_prompts
from dpokit.errors import ConfigError


@dataclass
class MethodSpec:
    """One training run of the sweep (an entry of the YAML's `methods` list)."""

    label: str = setting(help="the method's name in plots and tables; runs with the same label form one family "
                              "(e.g. DPO's β sweep)")
    loss: str = setting(help="a dpokit loss expression, e.g. sigmoid, unlikelihood, sft, plackett_luce")
    beta: float | None = setting(None, "loss.beta for this run, if the loss uses it")
    alpha: float | None = setting(None, "loss.unlikelihood_alpha for this run")
    run: dict[str, Any] = setting(help="`dpokit train` settings for this run only, applied after the shared `run`, "
                                       "e.g. {train: {lr: 1.0e-4}}", factory=dict)

    def __post_init__(self) -> None:
        self.run = config_io.flatten(self.run)  # dotted keys: {"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}

    @property
    def setting(self) -> str:
        """The swept hyper-parameter, e.g. "β=0.1" ("" for none)."""
        parts = [f"β={self.beta:g}" if self.beta is not None else "", f"α={self.alpha:g}" if self.alpha is not None
                 else ""]
        return ", ".join(p for p in parts if p)

    @property
    def slug(self) -> str:
        """A directory name, e.g. "dpo-beta0.1"."""
        text = self.label.lower() + (f"-beta{self.beta:g}" if self.beta is not None else "")
        text += f"-alpha{self.alpha:g}" if self.alpha is not None else ""
        return re.sub(r"[^a-z0-9.+-]+", "-", text).strip("-")


def paper_methods() -> list[MethodSpec]:
    """The DPO paper's §6.1 comparison (its PPO arms aside): DPO over β, Unlikelihood over α, Preferred-FT, and
    DPO's Plackett–Luce form over the ranked 4-lists."""
    return [
        *(MethodSpec("DPO", "sigmoid", beta=b) for b in (0.05, 0.1, 1.0, 5.0)),
        *(MethodSpec("Unlikelihood", "unlikelihood", alpha=a) for a in (0.1, 1.0)),
        MethodSpec("Preferred-FT", "sft"),
        MethodSpec("Plackett-Luce", "plackett_luce", beta=0.1),
    ]


@dataclass(kw_only=True)
class FrontierSettings:
    """What the YAML file and the experiment share; each key's help is what `dpokit frontier --help` prints."""

    model: str = setting("", "required: πref, a saved causal LM + tokenizer; every method starts from it")
    output_dir: str = setting("frontier-run", "where runs, figures and the report go (--output-dir overrides it)")
    samples_per_prompt: int = setting(4, "K completions per training prompt -> K(K-1)/2 pairs and one ranked list")
    eval_samples_per_prompt: int = setting(1, "completions per held-out prompt at each evaluation")
    max_new_tokens: int = setting(24, "completion budget in tokens, for every sample")
    chat: bool | None = setting(None, "render prompts with the model's chat template (a prompt is one user message) "
                                      "and stop at its end of turn; null: when the model has a template")
    seed: int = setting(0, "seeds the prompt split, every draw and every run")
    run: dict[str, Any] = setting(
        help="`dpokit train` settings for every method, by section, e.g. {train: {lr: 3.0e-4, max_steps: 200, "
             "eval_every: 25}}; evaluations run every train.eval_every steps; batch_size counts pairs, and ranked / "
             "best-of-K runs get as many sequences per step (2 x batch_size)", factory=dict)
    methods: list[MethodSpec] = setting(
        help="one run each, e.g. [{label: DPO, loss: sigmoid, beta: 0.1}, {label: Preferred-FT, loss: sft}]; "
             "default: the DPO paper's set (DPO over β, Unlikelihood over α, Preferred-FT, Plackett-Luce)",
        factory=paper_methods)


@dataclass(kw_only=True)
class FrontierConfig(FrontierSettings):
    """Everything the protocol needs except the reward function (see `frontier.run_frontier`)."""

    train_prompts: list[str]
    eval_prompts: list[str]
    sample_batch_size: int = 128
    progress: bool = True

    def check(self) -> None:
        if not self.model:
            raise ConfigError("the frontier needs a reference model (model:)")
        if not self.train_prompts:
            raise ConfigError("the frontier needs training prompts (prompts:)")
        if not self.eval_prompts:
            raise ConfigError("the frontier needs held-out prompts (eval_prompts:, or eval_fraction > 0)")
        if self.samples_per_prompt < 2:
            raise ConfigError(f"samples_per_prompt must be >= 2 to form pairs, got {self.samples_per_prompt}")
        for key in ("eval_samples_per_prompt", "max_new_tokens", "sample_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.methods:
            raise ConfigError("methods: is empty; list at least one {label, loss} or leave it out for the paper's set")
        for i, method in enumerate(self.methods):
            if not method.label.strip() or not method.loss.strip():
                raise ConfigError(f"config key 'methods[{i}]': label and loss may not be empty")
        slugs = [m.slug for m in self.methods]
        repeated = sorted({s for s in slugs if slugs.count(s) > 1})
        if repeated:
            raise ConfigError(f"methods repeat the same label and setting: {', '.join(repeated)}")


@dataclass(kw_only=True)
class FrontierFile(FrontierSettings):
    """`dpokit frontier --config FILE`: the shared settings, plus where the prompts and the reward come from."""

    prompts: str = setting("", "required: JSONL with a \"prompt\" field, or .txt with one prompt per line")
    eval_prompts: str | None = setting(None, "held-out prompts, same formats; default: eval_fraction of `prompts`")
    eval_fraction: float = setting(0.2, "fraction of `prompts` held out when eval_prompts is not given (seeded)")
    reward: str = setting("vader", "vader | module:function | file.py:function | sequence-classification model dir")
    reward_label: str | int | None = setting(None, "classifier only: the label (name or index) whose logit is the "
                                                   "reward")
    reward_text: str = setting("completion", "completion | full (prompt + completion)", choices=("completion", "full"))

    def experiment(self) -> FrontierConfig:
        """The prompts read (held-out ones split off, seeded, unless `eval_prompts` names a file); checked."""
        prompts = read_prompts(self.prompts)
        if self.eval_prompts:
            train, held_out = prompts, read_prompts(self.eval_prompts)
        else:
            train, held_out = split_prompts(prompts, self.eval_fraction, self.seed)
        shared = {f.name: getattr(self, f.name) for f in fields(FrontierSettings)}
        cfg = FrontierConfig(**{**shared, "run": config_io.flatten(self.run)}, train_prompts=train,
                             eval_prompts=held_out)
        cfg.check()
        return cfg


def load_frontier_config(path: str, output_dir: str | None = None) -> FrontierFile:
    """The YAML file, checked like every config (unknown keys, types, `methods[i].key`); `output_dir` overrides it."""
    file = config_io.load(FrontierFile(), path, {"output_dir": output_dir} if output_dir else {})
    config_io.validate(file, require=("model", "prompts"))
    return file


def split_prompts(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded shuffle, so held-out prompts are never trained on."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in (0, 1) when no eval_prompts are given, got {eval_fraction}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(prompts) * eval_fraction))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]
