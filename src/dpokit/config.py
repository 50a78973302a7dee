"""Run configuration: dataclasses are the truth; YAML files and dotted `key.sub=value` overrides feed them.

Precedence, lowest first: dataclass defaults < `--config` YAML < CLI flags < dotted overrides. Every key is checked
(unknown keys and wrong types fail with the key named) before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpokit.data.sources import looks_local
from dpokit.errors import ConfigError


@dataclass
class LoraConfig:
    enabled: bool = False  # train a LoRA adapter instead of all weights; the reference is then the adapter switched off
    r: int = 16  # adapter rank
    alpha: int = 32  # scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the adapter input
    target_modules: str = "all-linear"  # peft target_modules: "all-linear" or a comma-separated list of module names


@dataclass
class ModelConfig:
    name_or_path: str = ""  # hub name or local directory of the policy's starting weights
    tokenizer: str | None = None  # defaults to name_or_path
    dtype: str = "float32"  # weights dtype: float32 | bfloat16
    trust_remote_code: bool = False  # run code shipped with the model; off unless you trust its source
    allow_pickle: bool = False  # accept pickle (.bin) checkpoints; by default only safetensors load
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, one extra forward of compute
    disable_dropout: bool = True  # DPO's log-ratios assume deterministic forwards; dropout adds noise to them
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ReferenceConfig:
    mode: str = "auto"  # auto (adapter with LoRA, else copy) | copy | adapter | precomputed | none
    name_or_path: str | None = None  # reference weights; default: the policy's starting weights
    cache_dir: str = "~/.cache/dpokit/reference"  # where precomputed reference log-probs are kept


@dataclass
class DataConfig:
    path: str = ""  # JSONL/JSON/Parquet/CSV file, or a `datasets` name or directory
    format: str = "auto"  # auto | explicit | implicit | conversational | ranked | unpaired
    split: str = "train"  # split name for `datasets` sources
    eval_path: str | None = None  # held-out file; otherwise eval_fraction of `path` is held out
    eval_fraction: float = 0.0  # fraction of examples held out for evaluation (deterministic under train.seed)
    prompt_marker: str = "\n\nAssistant:"  # implicit format: the prompt ends at the last occurrence of this
    on_bad_record: str = "error"  # error: stop at the first bad record, naming file, line, field | skip: count it
    max_length: int = 512  # prompt + response tokens, per sequence
    max_prompt_length: int | None = None  # over-long examples cut the prompt to this first; null: max_length // 2
    prompt_truncation: str = "keep_end"  # keep_end (dialogues: keep the last turns) | keep_start | none (never cut)
    limit: int | None = None  # use only the first N examples (after validation)


@dataclass
class LossConfig:
    name: str = "sigmoid"  # a loss or weighted sum, e.g. "sigmoid", "ipo", "sigmoid + 0.5*sft" (RPO)
    beta: float = 0.1  # β: strength of the KL constraint (the implicit reward is β·log πθ/πref)
    label_smoothing: float = 0.0  # ε for cdpo / robust: assumed fraction of flipped preference labels
    reference_free: bool = False  # treat log πref as 0 (no reference model)
    simpo_gamma: float = 0.5  # SimPO target margin γ
    orpo_lambda: float = 0.1  # ORPO weight λ of the odds-ratio term
    unlikelihood_alpha: float = 1.0  # weight α of the unlikelihood term on rejected tokens
    kto_desirable_weight: float = 1.0  # KTO λ_D
    kto_undesirable_weight: float = 1.0  # KTO λ_U


@dataclass
class TrainConfig:
    output_dir: str = ""  # run directory: model, tokenizer, metrics.jsonl, config.yaml, summary.json
    seed: int = 0  # seeds weights init (LoRA), data order and the eval split
    batch_size: int = 8  # examples (pairs) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step; pairs per step = batch_size * grad_accum
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    epochs: float = 1.0  # passes over the training data when max_steps is not set
    lr: float = 1e-6  # peak learning rate (the DPO paper uses 1e-6 with batch 64)
    optimizer: str = "rmsprop"  # rmsprop (the DPO paper's choice) | adamw
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (RMSprop) weight decay
    warmup_steps: int = 0  # linear warmup from 0 to lr over this many optimizer steps
    schedule: str = "constant"  # after warmup: constant | cosine (to 0 at the last step)
    max_grad_norm: float | None = 10.0  # clip the global gradient norm; null: no clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights and optimizer state stay fp32)
    shuffle: bool = True  # reshuffle training data each epoch (seeded)
    length_bucketing: bool = False  # batch examples of similar length together (deterministic under seed)
    packing: bool = True  # pack sequences into rows without padding; attention confined to each sequence
    shared_prompt: bool = True  # compute each prompt once for all of its responses
    row_length: int | None = None  # packed row capacity in tokens; null: data.max_length (or the longest example)
    logps_chunk_size: int = 1024  # response tokens per LM-head chunk (0: all at once); bounds logits memory
    fsdp: bool = False  # with several processes: shard weights, grads, optimizer state, reference (FSDP2)
    eval_every: int = 0  # run held-out evaluation every N steps (0: only at the end, if there is eval data)
    eval_batch_size: int | None = None  # defaults to batch_size
    log_every: int = 1  # write a metrics line every N optimizer steps
    save: bool = True  # save the final model + tokenizer to output_dir
    save_every: int = 0  # write a resumable checkpoint every N steps (0: only when stopped by SIGTERM/SIGINT)
    keep_checkpoints: int = 2  # keep the newest N checkpoints under output_dir/checkpoints
    resume: str | None = None  # "latest" (newest checkpoint in output_dir) or a checkpoint directory
    progress: bool = True  # show progress bars


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model, data, loss, train, ...)")
    return data


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"loss": {"beta": 0.1}} -> {"loss.beta": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["loss.beta=0.5", "data.limit=null"] -> {"loss.beta": 0.5, "data.limit": None} (values parsed as YAML)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        try:
            overrides[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            overrides[key.strip()] = raw
    return overrides


def apply(config: Any, values: dict[str, Any]) -> None:
    """Sets dotted keys on the nested dataclass `config`, checking each key and value type."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for i, part in enumerate(parents):
            node = getattr(node, _field(node, part, ".".join(parents[: i + 1])).name)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"unknown config key '{key}'")
        spec = _field(node, leaf, key)
        if dataclasses.is_dataclass(getattr(node, spec.name)):
            raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. '{key}.<field>=...'")
        setattr(node, spec.name, _coerce(key, value, _hints(type(node))[spec.name]))


def build_config(yaml_path: str | None = None, *layers: dict[str, Any], base: Config | None = None) -> Config:
    """`base` (or the defaults), then the YAML file, then each layer of dotted overrides in order."""
    config = base or Config()
    if yaml_path:
        apply(config, flatten(load_yaml(yaml_path)))
    for layer in layers:
        apply(config, {k: v for k, v in layer.items()})
    return config


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True))


def _field(node: Any, name: str, key: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(node)}
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {', '.join(fields)}")
    return fields[name]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks `value` against the annotation; ints are accepted for floats and numeric strings parsed."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    if isinstance(value, str):  # e.g. "1e-6" from a YAML file, which YAML 1.1 reads as a string
        for kind in (int, float):
            if kind in allowed:
                try:
                    return kind(value)
                except ValueError:
                    pass
    raise ConfigError(f"config key '{key}' must be {_type_names(allowed)}, got {value!r}")


def _type_names(allowed: tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in allowed)


def _check_tree(node: Any, prefix: str = "") -> None:
    """What `apply` checks, for a Config built or changed in Python: no unknown attribute (`cfg.loss.betta = 0.5`
    would otherwise be ignored) and every value of its annotated type (a numeric string is not a number here)."""
    fields = {f.name: f for f in dataclasses.fields(node)}
    for name in vars(node):
        if name not in fields:
            _field(node, name, prefix + name)  # raises, naming the key and the closest valid one
    for name, hint in _hints(type(node)).items():
        key, value = prefix + name, getattr(node, name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. '{key}.<field>=...'")
            _check_tree(value, key + ".")
            continue
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if isinstance(value, str) and str not in allowed:
            raise ConfigError(f"config key '{key}' must be {_type_names(allowed)}, got {value!r}")
        _coerce(key, value, hint)


_CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "reference.mode": ("auto", "copy", "adapter", "precomputed", "none"),
    "data.format": ("auto", "explicit", "implicit", "conversational", "ranked", "unpaired"),
    "data.on_bad_record": ("error", "skip"),
    "data.prompt_truncation": ("keep_end", "keep_start", "none"),
    "train.optimizer": ("rmsprop", "adamw"),
    "train.schedule": ("constant", "cosine"),
    "train.precision": ("fp32", "bf16"),
}


def validate(config: Config, *, require: tuple[str, ...] = ()) -> None:
    """Checks keys and types (again, for configs built in Python), then choices, ranges, paths that must exist, and
    the keys a command requires."""
    _check_tree(config)
    flat = flatten(to_dict(config))
    for key in require:
        if flat.get(key) in (None, ""):
            raise ConfigError(f"config key '{key}' is required")
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    positive = ["loss.beta", "train.lr", "train.batch_size", "train.grad_accum", "data.max_length", "train.log_every"]
    optional = ("train.max_steps", "train.eval_batch_size", "train.row_length", "data.max_prompt_length", "data.limit")
    positive += [k for k in optional if flat[k] is not None]
    for key in positive:
        if not flat[key] > 0:
            raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]!r}")
    data = config.data
    if data.max_prompt_length is not None and data.max_prompt_length >= data.max_length:
        raise ConfigError(
            f"data.max_prompt_length ({data.max_prompt_length}) must be < data.max_length ({data.max_length}),"
            " or responses get no tokens"
        )
    if not 0.0 <= data.eval_fraction < 1.0:
        raise ConfigError(f"config key 'data.eval_fraction' must be in [0, 1), got {data.eval_fraction}")
    if config.train.max_steps is None and not config.train.epochs > 0:
        raise ConfigError(
            f"config key 'train.epochs' must be > 0 when train.max_steps is not set, got {config.train.epochs}"
        )
    for key in ("train.warmup_steps", "train.eval_every", "train.weight_decay", "train.logps_chunk_size",
                "train.save_every", "train.keep_checkpoints"):
        if flat[key] < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]}")
    for key in ("data.path", "data.eval_path"):
        _check_local_path(key, flat[key])
    for key in ("model.name_or_path", "model.tokenizer", "reference.name_or_path"):
        _check_model_dir(key, flat[key])


def _check_local_path(key: str, value: str | None) -> None:
    """A path that names something on this machine (see `looks_local`) must exist; others may be hub names."""
    if value and looks_local(value) and not Path(value).expanduser().exists():
        raise ConfigError(f"config key '{key}': file not found: {value}")


def _check_model_dir(key: str, value: str | None) -> None:
    """A local model path must be a directory (what save_pretrained writes); a hub name is left to transformers."""
    if not value:
        return
    path = Path(value).expanduser()
    if (looks_local(value) or path.exists()) and not path.is_dir():
        problem = "is a file, not a model directory" if path.exists() else "no such directory"
        raise ConfigError(f"config key '{key}': {problem}: {value}")


def describe_keys() -> str:
    """Every config key with its default and the comment beside it in this file: the `--help` reference."""
    import inspect
    import re

    lines = []
    pattern = re.compile(r"^\s+(\w+): [^=]+= (.+?)\s+# (.+)$")

    def walk(cls: type, prefix: str) -> None:
        comments = {m[1]: m[3] for m in map(pattern.match, inspect.getsource(cls).splitlines()) if m}
        for f in dataclasses.fields(cls):
            sub = _hints(cls)[f.name]
            if dataclasses.is_dataclass(sub):
                walk(sub, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            lines.append(f"  {prefix + f.name:<32} {default!r:<14} {comments.get(f.name, '')}")

    for section in dataclasses.fields(Config):
        walk(_hints(Config)[section.name], section.name + ".")
    return "\n".join(lines)
