"""What a reward–KL frontier experiment runs: the reference model, prompts, methods and shared training settings.

`dpokit frontier --config frontier.yaml` reads this YAML (every key optional unless marked):

    model: runs/sft               # required: πref, a saved causal LM + tokenizer; every method starts from it
    prompts: prompts.jsonl        # required: JSONL with a "prompt" field, or .txt with one prompt per line
    eval_prompts: held_out.txt    # held-out prompts; default: eval_fraction of `prompts`
    eval_fraction: 0.2
    reward: vader                 # vader | module:function | file.py:function | sequence-classification model dir
    reward_label: POSITIVE        # classifier only: the label whose logit is the reward
    reward_text: completion       # completion | full (prompt + completion)
    output_dir: frontier-run
    samples_per_prompt: 4         # K completions per training prompt -> K(K-1)/2 pairs and one ranked list
    eval_samples_per_prompt: 1    # completions per held-out prompt at each evaluation
    max_new_tokens: 24
    seed: 0
    run:                          # dpokit train settings for every method, in `dpokit train` config sections;
                                  # evaluations run every train.eval_every steps; batch_size counts pairs, and
                                  # ranked / best-of-K runs get as many sequences per step (2 x batch_size)
      train: {lr: 3.0e-4, max_steps: 200, batch_size: 16, eval_every: 25, optimizer: adamw}
    methods:                      # default: the DPO paper's set (DPO over β, Unlikelihood over α, Preferred-FT, PL)
      - {label: DPO, loss: sigmoid, beta: 0.1}
      - {label: Unlikelihood, loss: unlikelihood, alpha: 1.0}
      - {label: Preferred-FT, loss: sft}
      - {label: Plackett-Luce, loss: plackett_luce, beta: 0.1, run: {train: {lr: 1.0e-4}}}
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dpokit import config as config_io
from dpokit.errors import ConfigError, DataError


@dataclass
class MethodSpec:
    """One training run of the sweep.

    Attributes:
        label: the method's name in plots and tables; runs with the same label form one family (e.g. DPO's β sweep).
        loss: a dpokit loss expression, e.g. "sigmoid", "unlikelihood", "sft", "plackett_luce".
        beta: loss.beta for this run, if the loss uses it.
        alpha: loss.unlikelihood_alpha for this run.
        run: dotted config keys for this run only, applied after the shared ones.
    """

    label: str
    loss: str
    beta: float | None = None
    alpha: float | None = None
    run: dict[str, Any] = field(default_factory=dict)

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


@dataclass
class FrontierConfig:
    """Everything the protocol needs except the reward function (see `frontier.run_frontier`)."""

    model: str
    train_prompts: list[str]
    eval_prompts: list[str]
    output_dir: str
    methods: list[MethodSpec] = field(default_factory=paper_methods)
    run: dict[str, Any] = field(default_factory=dict)  # dotted keys shared by every run, e.g. {"train.lr": 3e-4}
    samples_per_prompt: int = 4
    eval_samples_per_prompt: int = 1
    max_new_tokens: int = 24
    sample_batch_size: int = 128
    seed: int = 0
    progress: bool = True

    def check(self) -> None:
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
        slugs = [m.slug for m in self.methods]
        repeated = sorted({s for s in slugs if slugs.count(s) > 1})
        if repeated:
            raise ConfigError(f"methods repeat the same label and setting: {', '.join(repeated)}")


@dataclass
class RewardSource:
    """The reward named in the YAML, loaded by `rewards.load_reward`."""

    source: str = "vader"
    label: str | None = None
    text: str = "completion"


TOP_KEYS = ("model", "prompts", "eval_prompts", "eval_fraction", "reward", "reward_label", "reward_text",
            "output_dir", "samples_per_prompt", "eval_samples_per_prompt", "max_new_tokens", "seed", "run", "methods")


def load_frontier_config(path: str, output_dir: str | None = None) -> tuple[FrontierConfig, RewardSource]:
    """Reads and checks the YAML (module docstring); relative file paths are relative to the working directory."""
    data = config_io.load_yaml(path)
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(TOP_KEYS)}")
    for key in ("model", "prompts"):
        if not data.get(key):
            raise ConfigError(f"{path}: '{key}' is required")
    prompts = read_prompts(str(data["prompts"]))
    if data.get("eval_prompts"):
        train, held_out = prompts, read_prompts(str(data["eval_prompts"]))
    else:
        train, held_out = split_prompts(prompts, float(data.get("eval_fraction", 0.2)), int(data.get("seed", 0)))
    cfg = FrontierConfig(
        model=str(data["model"]), train_prompts=train, eval_prompts=held_out,
        output_dir=output_dir or str(data.get("output_dir", "frontier-run")),
        run=config_io.flatten(_mapping(data.get("run") or {}, "run")),
    )
    if data.get("methods") is not None:
        cfg.methods = [_method(m, i) for i, m in enumerate(_list(data["methods"], "methods"))]
    for key in ("samples_per_prompt", "eval_samples_per_prompt", "max_new_tokens", "seed"):
        if key in data:
            setattr(cfg, key, _int(data[key], key))
    cfg.check()
    reward = RewardSource(str(data.get("reward", "vader")), _opt_str(data.get("reward_label")),
                          str(data.get("reward_text", "completion")))
    return cfg, reward


def read_prompts(path: str) -> list[str]:
    """Prompts from a .txt file (one per line, blank lines skipped) or JSONL/JSON records with a "prompt" field."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompts file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    prompts = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON: {err.msg}", source=path, line=line_no) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise DataError("expected an object with a non-empty string 'prompt'", source=path, line=line_no,
                            field="prompt")
        prompts.append(record["prompt"])
    if not prompts:
        raise DataError("no prompts", source=path)
    return prompts


def split_prompts(prompts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): a seeded shuffle, so held-out prompts are never trained on."""
    if not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in (0, 1) when no eval_prompts are given, got {eval_fraction}")
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(prompts) * eval_fraction))
    return [prompts[i] for i in order[n_eval:]], [prompts[i] for i in order[:n_eval]]


def _method(item: Any, index: int) -> MethodSpec:
    where = f"methods[{index}]"
    entry = _mapping(item, where)
    valid = [f.name for f in fields(MethodSpec)]
    unknown = sorted(set(entry) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
    if not entry.get("label") or not entry.get("loss"):
        raise ConfigError(f"{where}: 'label' and 'loss' are required")
    return MethodSpec(str(entry["label"]), str(entry["loss"]), _opt_float(entry.get("beta"), f"{where}.beta"),
                      _opt_float(entry.get("alpha"), f"{where}.alpha"),
                      config_io.flatten(_mapping(entry.get("run") or {}, f"{where}.run")))


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"'{key}' must be a list, got {type(value).__name__}")
    return value


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"'{key}' must be an integer, got {value!r}")
    return value


def _opt_float(value: Any, key: str) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{key}' must be a number, got {value!r}") from None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
