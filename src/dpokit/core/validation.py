"""Config keys and values checked against a settings dataclass's annotations, for `dpokit.trainer.config`'s loader.

YAML and overrides arrive as plain values: `coerce` checks (and where safe converts) each one against its field's
type, naming the key in every error: `loss.beta`, or `methods[2].beta` inside a list of dataclasses. `check_tree`
does the same for settings built or changed in Python, plus each field's `choices`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import MISSING
from typing import Any, TypeVar

from dpokit.core.errors import ConfigError

T = TypeVar("T")


def field_named(node: Any, name: str, key: str) -> dataclasses.Field:
    """The field `name` of the dataclass (or instance) `node`; an unknown name fails with the full `key`, the closest
    valid key and every key valid there."""
    fields = {f.name: f for f in dataclasses.fields(node)}
    if name not in fields:
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean '{key.rsplit('.', 1)[0] + '.' if '.' in key else ''}{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{key}'{hint}; valid keys here: {', '.join(fields)}")
    return fields[name]


def type_hints(cls: type) -> dict[str, Any]:
    """Field name -> its annotation, resolved (these modules use `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the annotation `hint` (and converted where safe); errors name `key`.

    Lists are checked item by item (`key[i]`); a mapping for a dataclass builds one, field by field (`key.field`);
    `dict` and `Any` pass through; scalars as in `_scalar`.
    """
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [coerce(f"{key}[{i}]", item, typing.get_args(hint)[0]) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, key)
    return _scalar(key, value, hint)


def _build(cls: type[T], values: Any, key: str) -> T:
    """A `cls` from a mapping of its fields (a list item in YAML); fields without a default are required."""
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{key}' must be a mapping of {', '.join(names)}; got {values!r}")
    hints = type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        spec = field_named(cls, str(name), f"{key}.{name}")
        kwargs[spec.name] = coerce(f"{key}.{name}", value, hints[spec.name])
    for spec in dataclasses.fields(cls):
        if spec.name not in kwargs and spec.default is MISSING and spec.default_factory is MISSING:
            raise ConfigError(f"config key '{key}.{spec.name}' is required")
    return cls(**kwargs)


def _scalar(key: str, value: Any, hint: Any) -> Any:
    """Checks `value` against a scalar annotation; ints are accepted for floats and numeric strings parsed."""
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


def check_tree(node: Any, prefix: str = "") -> None:
    """What `apply` checks, for settings built or changed in Python: no unknown attribute (`cfg.loss.betta = 0.5`
    would otherwise be ignored), every value of its annotated type (a numeric string is not a number here), and
    every value among its field's `choices` and within its range."""
    fields = {f.name: f for f in dataclasses.fields(node)}
    for name in vars(node):
        if name not in fields:
            field_named(node, name, prefix + name)  # raises, naming the key and the closest valid one
    for name, hint in type_hints(type(node)).items():
        key, value = prefix + name, getattr(node, name)
        if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. '{key}.<field>=...'")
        _check_value(key, value, hint)
        choices = fields[name].metadata.get("choices", ())
        if choices and value not in choices:
            allowed = ", ".join("null" if c is None else str(c) for c in choices)
            raise ConfigError(f"config key '{key}' must be one of {allowed}; got {value!r}")
        check_range(key, value, fields[name].metadata.get("range", {}))


_RANGE_TESTS = {"gt": (">", lambda v, b: v > b), "ge": (">=", lambda v, b: v >= b), "le": ("<=", lambda v, b: v <= b)}


def check_range(key: str, value: Any, bounds: dict[str, float]) -> None:
    """`value` within the field's `bounds` (`setting(..., gt=0)`); null passes (the type decides whether it may
    be null). One wording for every range: "config key 'train.lr' must be > 0, got 0.0"."""
    if value is None or isinstance(value, bool):
        return
    for op, bound in bounds.items():
        sign, test = _RANGE_TESTS[op]
        if not test(value, bound):
            raise ConfigError(f"config key '{key}' must be {sign} {bound}, got {value!r}")


def _check_value(key: str, value: Any, hint: Any) -> None:
    """One value against its annotation: a dataclass (checked field by field), a list (item by item), a mapping,
    or a scalar, where a string never counts as a number."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise ConfigError(f"config key '{key}' must be a {hint.__name__}, got {value!r}")
        check_tree(value, key + ".")
    elif origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        for i, item in enumerate(value):
            _check_value(f"{key}[{i}]", item, typing.get_args(hint)[0])
    elif origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
    elif hint is not Any:
        allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if isinstance(value, str) and str not in allowed:
            raise ConfigError(f"config key '{key}' must be {_type_names(allowed)}, got {value!r}")
        _scalar(key, value, hint)
