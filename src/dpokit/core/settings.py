"""Settings: dataclasses are the truth; YAML files and dotted `key.sub=value` overrides feed them.

Precedence, lowest first: dataclass defaults < `--config` YAML < CLI flags < dotted overrides. Every key is checked
(unknown keys and wrong types fail with the key named) before any model or data is loaded.

One loader serves every command. A command's settings are a dataclass whose fields carry their help text and checks
(`setting(default, help, choices=..., gt=0)`, i.e. `field(metadata={"help": ...})`), plus an optional `check()`
method for cross-field rules. Then `load(Settings(), yaml_path, flags, overrides)` fills it, `validate(settings,
require=(...))` checks it and `describe_keys(Settings)` writes its `--help`. Fields may be scalars, sections (nested
dataclasses: keys `a.b`), lists (of scalars or of dataclasses: keys `a[0].b`) and `dict[str, Any]` (passed through).
`trainer.config.Config` is `dpokit train`'s; `experiments.frontier_config.FrontierFile` is `dpokit frontier`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dpokit.core.errors import ConfigError
from dpokit.core.validation import check_tree, coerce, field_named, type_hints

T = TypeVar("T")


def setting(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            choices: tuple[Any, ...] = (), gt: float | None = None, ge: float | None = None,
            le: float | None = None) -> Any:
    """A settings field with its `--help` text and what `validate` checks beyond the type: the values it may take
    (`choices`) and its range (`gt`: > bound, `ge`: >= bound, `le`: <= bound; a null value passes where the type
    allows null). Every range error reads "config key 'K' must be > 0, got V" (or ">= 0", "<= 1")."""
    bounds = {"gt": gt, "ge": ge, "le": le}
    metadata = {"help": help, "choices": choices, "range": {op: b for op, b in bounds.items() if b is not None}}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


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

    >>> @dataclasses.dataclass
    ... class Loss:
    ...     name: str = setting("sigmoid", "the loss")
    ...     beta: float = setting(0.1, "β", gt=0)
    >>> @dataclasses.dataclass
    ... class Run:
    ...     loss: Loss = dataclasses.field(default_factory=Loss)
    ...     lr: float = setting(1e-6, "learning rate")
    >>> cfg = load(Run(), None, {"loss": {"beta": 0.5}}, {"loss.name": "ipo"})
    >>> (cfg.loss.name, cfg.loss.beta, cfg.lr)
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


def describe_keys(cls: type) -> str:
    """One line per key of the settings dataclass `cls`: name, default and help (its `--help` reference)."""
    return "\n".join(f"  {key:<32} {_default_text(spec):<14} {spec.metadata.get('help', '')}"
                     for key, spec, _ in keys_of(cls))


def keys_of(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, resolved type) of every key of the settings dataclass `cls`, in declaration order: a
    nested section gives keys `a.b`; a list of dataclasses is a key itself, then its items' keys `a[i].b`. What
    `--help` and the docs' config reference are both made from."""
    hints = type_hints(cls)
    for spec in dataclasses.fields(cls):
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):
            yield from keys_of(hint, f"{prefix}{spec.name}.")
            continue
        yield prefix + spec.name, spec, hint
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(item):
            yield from keys_of(item, f"{prefix}{spec.name}[i].")


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


