"""Run configuration: dataclasses are the truth; YAML files and dotted `key.sub=value` overrides feed them.

Precedence, lowest first: dataclass defaults < `--config` YAML < CLI flags < dotted overrides. Every key is checked
(unknown keys and wrong types fail with the key named) before any model or data is loaded.

One loader serves every command. A command's settings are a dataclass whose fields carry their help text
(`setting(default, help, choices=...)`, i.e. `field(metadata={"help": ...})`), plus an optional `check()` method for
ranges and cross-field rules. Then `load(Settings(), yaml_path, flags, overrides)` fills it, `validate(settings,
require=(...))` checks it and `describe_keys(Settings)` writes its `--help`. Fields may be scalars, sections (nested
dataclasses: keys `a.b`), lists (of scalars or of dataclasses: keys `a[0].b`) and `dict[str, Any]` (passed through).
`Config` below is `dpokit train`'s; `eval/frontier_config.FrontierFile` is `dpokit frontier`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import resolve_model
from dpokit.core.validation import check_tree, coerce, field_named, type_hints
from dpokit.data.sources import looks_local
from dpokit.losses import LossParams, objective_from_config
from dpokit.trainer.trackers import HELP as TRACKING_HELP
from dpokit.trainer.trackers import check_report_to

T = TypeVar("T")


def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            choices: tuple[Any, ...] = ()) -> Any:
    """A config field with its `--help` text and, if given, the values it may take (checked by `validate`)."""
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class LoraConfig:
    enabled: bool = setting(False, "train a LoRA adapter instead of all weights; the reference is then the adapter "
                                   "switched off")
    r: int = setting(16, "adapter rank")
    alpha: int = setting(32, "scaling numerator (scale = alpha / r)")
    dropout: float = setting(0.0, "dropout on the adapter input")
    target_modules: str = setting("all-linear", "peft target_modules: \"all-linear\" or a comma-separated list of "
                                                "module names")


@dataclass
class ModelConfig:
    name_or_path: str = setting("", "hub name or local directory of the policy's starting weights; or a .gguf file, "
                                    "or a packaged model's short name (smollm2-135m-instruct)")
    gguf_file: str | None = setting(None, "a .gguf file in the name_or_path directory or hub repo to load weights "
                                          "(and, with no tokenizer set, the tokenizer) from")
    tokenizer: str | None = setting(None, "defaults to name_or_path")
    dtype: str = setting("float32", "weights dtype: float32 | bfloat16", choices=("float32", "bfloat16"))
    trust_remote_code: bool = setting(False, "run code shipped with the model; off unless you trust its source")
    allow_pickle: bool = setting(False, "accept pickle (.bin) checkpoints; by default only safetensors load")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward: less memory, one extra "
                                                  "forward of compute")
    disable_dropout: bool = setting(True, "DPO's log-ratios assume deterministic forwards; dropout adds noise to "
                                          "them")
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class ReferenceConfig:
    mode: str = setting("auto", "auto (adapter with LoRA, else copy) | copy | adapter | precomputed | none",
                        choices=("auto", "copy", "adapter", "precomputed", "none"))
    name_or_path: str | None = setting(None, "reference weights; default: the policy's starting weights")
    cache_dir: str = setting("~/.cache/dpokit/reference", "where precomputed reference log-probs are kept")


@dataclass
class DataConfig:
    path: str = setting("", "JSONL/JSON/Parquet/CSV file, or a `datasets` name or directory")
    format: str = setting("auto", "auto | explicit | implicit | conversational | ranked | unpaired",
                          choices=("auto", "explicit", "implicit", "conversational", "ranked", "unpaired"))
    split: str = setting("train", "split name for `datasets` sources")
    eval_path: str | None = setting(None, "held-out file; otherwise eval_fraction of `path` is held out")
    eval_fraction: float = setting(0.0, "fraction of examples held out for evaluation (deterministic under "
                                        "train.seed)")
    prompt_marker: str = setting("\n\nAssistant:", "implicit format: the prompt ends at the last occurrence of this")
    on_bad_record: str = setting("error", "error: stop at the first bad record, naming file, line, field | skip: "
                                          "count it", choices=("error", "skip"))
    max_length: int = setting(512, "prompt + response tokens, per sequence")
    max_prompt_length: int | None = setting(None, "over-long examples cut the prompt to this first; null: "
                                                  "max_length // 2")
    prompt_truncation: str = setting("keep_end", "keep_end (dialogues: keep the last turns) | keep_start | none "
                                                 "(never cut)", choices=("keep_end", "keep_start", "none"))
    limit: int | None = setting(None, "use only the first N examples (after validation)")


@dataclass
class LossConfig(LossParams):
    """Which loss, plus its hyper-parameters: the fields of `losses.LossParams`, defined (with help) there once;
    `losses.objective_from_config` turns this section into the objective and its validated parameters."""

    name: str = setting("sigmoid", "a loss or a weighted sum, e.g. \"sigmoid\", \"ipo\", \"sigmoid + 0.5*sft\" "
                                   "(RPO); losses are listed after the keys")
    reference_free: bool = setting(False, "treat log πref as 0 (no reference model)")


@dataclass
class TrainConfig:
    output_dir: str = setting("", "run directory: model, tokenizer, metrics.jsonl, config.yaml, summary.json")
    seed: int = setting(0, "seeds weights init (LoRA), data order and the eval split")
    batch_size: int = setting(8, "examples (pairs) per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimizer step; pairs per step = batch_size * grad_accum")
    max_steps: int | None = setting(None, "optimizer steps; overrides epochs when set")
    epochs: float = setting(1.0, "passes over the training data when max_steps is not set")
    lr: float = setting(1e-6, "peak learning rate (the DPO paper uses 1e-6 with batch 64)")
    optimizer: str = setting("rmsprop", "rmsprop (the DPO paper's choice) | adamw", choices=("rmsprop", "adamw"))
    weight_decay: float = setting(0.0, "decoupled (AdamW) or L2 (RMSprop) weight decay")
    warmup_steps: int = setting(0, "linear warmup from 0 to lr over this many optimizer steps")
    schedule: str = setting("constant", "after warmup: constant | cosine (to 0 at the last step)",
                            choices=("constant", "cosine"))
    max_grad_norm: float | None = setting(10.0, "clip the global gradient norm; null: no clipping")
    precision: str = setting("fp32", "fp32 | bf16 (autocast; weights and optimizer state stay fp32)",
                             choices=("fp32", "bf16"))
    shuffle: bool = setting(True, "reshuffle training data each epoch (seeded)")
    length_bucketing: bool = setting(False, "batch examples of similar length together (deterministic under seed)")
    packing: bool = setting(True, "pack sequences into rows without padding; attention confined to each sequence")
    shared_prompt: bool = setting(True, "compute each prompt once for all of its responses")
    row_length: int | None = setting(None, "packed row capacity in tokens; null: data.max_length (or the longest "
                                           "example)")
    logps_chunk_size: int = setting(1024, "response tokens per LM-head chunk (0: all at once); bounds logits memory")
    fsdp: bool = setting(False, "with several processes: shard weights, grads, optimizer state, reference (FSDP2)")
    eval_every: int = setting(0, "run held-out evaluation every N steps (0: only at the end, if there is eval data)")
    eval_batch_size: int | None = setting(None, "defaults to batch_size")
    log_every: int = setting(1, "write a metrics line every N optimizer steps")
    save: bool = setting(True, "save the final model + tokenizer to output_dir")
    save_every: int = setting(0, "write a resumable checkpoint every N steps (0: only when stopped by "
                                 "SIGTERM/SIGINT)")
    keep_checkpoints: int = setting(2, "keep the newest N checkpoints under output_dir/checkpoints")
    resume: str | None = setting(None, "\"latest\" (newest checkpoint in output_dir) or a checkpoint directory")
    progress: bool = setting(True, "show progress bars")
    report_to: list[str] = setting(help=TRACKING_HELP["report_to"], factory=list)
    project: str = setting("dpokit", TRACKING_HELP["project"])
    run_name: str = setting("", TRACKING_HELP["run_name"])
    tracking_dir: str = setting("", TRACKING_HELP["tracking_dir"])


@dataclass
class Config:
    """`dpokit train` / `sft` / `eval`: one section per part of the run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def check(self) -> None:
        """Ranges, cross-field rules, the loss, and paths that must exist (`validate` runs this after the types)."""
        flat = flatten(to_dict(self))
        positive = ["train.lr", "train.batch_size", "train.grad_accum", "data.max_length", "train.log_every"]
        optional = ("train.max_steps", "train.eval_batch_size", "train.row_length", "data.max_prompt_length",
                    "data.limit")
        for key in positive + [k for k in optional if flat[k] is not None]:
            if not flat[key] > 0:
                raise ConfigError(f"config key '{key}' must be > 0, got {flat[key]!r}")
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
        for key in ("train.warmup_steps", "train.eval_every", "train.weight_decay", "train.logps_chunk_size",
                    "train.save_every", "train.keep_checkpoints"):
            if flat[key] < 0:
                raise ConfigError(f"config key '{key}' must be >= 0, got {flat[key]}")
        objective_from_config(self)  # the loss's own ranges (β > 0, ...) are checked there, once
        check_report_to("train.report_to", self.train.report_to)  # before any model loads
        for key in ("data.path", "data.eval_path"):
            _check_local_path(key, flat[key])
        for key in ("model.name_or_path", "model.tokenizer", "reference.name_or_path"):
            _check_model_dir(key, flat[key], self.model.gguf_file if key == "model.name_or_path" else None)


# --- the loader: any settings dataclass ------------------------------------------------------------------------------


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (or of sections: model, data, ...)")
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


def load(config: T, yaml_path: str | Path | None = None, *layers: dict[str, Any]) -> T:
    """Fills the settings dataclass `config` (its defaults, or a base a command prepared): the YAML file first, then
    each layer (flags, overrides) in order. Every key and value type is checked; errors from the file name it.

    >>> cfg = load(Config(), None, {"loss": {"beta": 0.5}}, {"loss.name": "ipo"})
    >>> (cfg.loss.name, cfg.loss.beta, cfg.train.lr)
    ('ipo', 0.5, 1e-06)
    """
    if yaml_path:
        tree = load_yaml(yaml_path)
        try:
            apply(config, tree)
        except ConfigError as err:
            raise ConfigError(f"{yaml_path}: {err}") from None
    for layer in layers:
        apply(config, layer)
    return config


def build_config(yaml_path: str | None = None, *layers: dict[str, Any], base: Config | None = None) -> Config:
    """The train config: `base` (or the defaults), then the YAML file, then each layer of keys in order (`load`)."""
    return load(base or Config(), yaml_path, *layers)


def apply(config: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Sets keys on the dataclass `config`, checking each key and value type.

    Keys are dotted (`{"loss.beta": 0.1}`) or nested as YAML reads them (`{"loss": {"beta": 0.1}}`); a section
    (a dataclass field) takes a mapping of its own keys. `prefix` names where `config` sits, for error messages.
    """
    for name, value in values.items():
        key = prefix + str(name)
        *parents, leaf = str(name).split(".")
        node = config
        for i, part in enumerate(parents):
            node = getattr(node, field_named(node, part, prefix + ".".join(parents[: i + 1])).name)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"unknown config key '{key}'")
        spec = field_named(node, leaf, key)
        current = getattr(node, spec.name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. '{key}.<field>=...'")
            apply(current, value, key + ".")
        else:
            setattr(node, spec.name, coerce(key, value, type_hints(type(node))[spec.name]))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True))


def validate(config: Any, *, require: tuple[str, ...] = ()) -> None:
    """Checks settings, also ones built or changed in Python: keys, types and choices; the keys a command requires;
    then the settings' own `check()` (ranges, cross-field rules, paths) if the dataclass has one."""
    check_tree(config)
    for key in require:
        if functools.reduce(getattr, key.split("."), config) in (None, ""):
            raise ConfigError(f"config key '{key}' is required")
    check = getattr(config, "check", None)
    if callable(check):
        check()


def describe_keys(cls: type = Config) -> str:
    """One line per key of the settings dataclass `cls`: name, default and help (its `--help` reference)."""
    lines: list[str] = []

    def walk(node: type, prefix: str) -> None:
        hints = type_hints(node)
        for f in dataclasses.fields(node):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{f.name}.")
                continue
            lines.append(f"  {prefix + f.name:<32} {_default_text(f):<14} {f.metadata.get('help', '')}")
            item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
            if dataclasses.is_dataclass(item):
                walk(item, f"{prefix}{f.name}[i].")

    walk(cls, "")
    return "\n".join(lines)


def field_of(cls: type, key: str) -> tuple[dataclasses.Field, Any]:
    """The field a dotted key names in the settings dataclass `cls`, and its type: what a CLI flag is built from."""
    *parents, leaf = key.split(".")
    for part in parents:
        cls = type_hints(cls)[part]
    return next(f for f in dataclasses.fields(cls) if f.name == leaf), type_hints(cls)[leaf]


def _default_text(spec: dataclasses.Field) -> str:
    if spec.default is not MISSING:
        value = spec.default
    elif spec.default_factory is not MISSING:
        value = spec.default_factory()
    else:
        return "required"
    text = repr(value)
    return "[...]" if isinstance(value, list) and len(text) > 14 else text


def _check_local_path(key: str, value: str | None) -> None:
    """A path that names something on this machine (see `looks_local`) must exist; others may be hub names."""
    if value and looks_local(value) and not Path(value).expanduser().exists():
        raise ConfigError(f"config key '{key}': file not found: {value}")


def _check_model_dir(key: str, value: str | None, gguf_file: str | None = None) -> None:
    """A local model path must be a directory (what save_pretrained writes); a hub name is left to transformers.
    GGUF sources (a .gguf file, a directory + gguf_file, a packaged short name) are checked by `resolve_model`."""
    if not value:
        return
    try:
        if resolve_model(value, gguf_file).gguf_file:
            return
    except ConfigError as err:
        raise ConfigError(f"config key '{key}': {err}") from None
    path = Path(value).expanduser()
    if (looks_local(value) or path.exists()) and not path.is_dir():
        problem = "is a file, not a model directory" if path.exists() else "no such directory"
        raise ConfigError(f"config key '{key}': {problem}: {value}")
