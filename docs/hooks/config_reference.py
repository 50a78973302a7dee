"""mkdocs hook: renders docs/config-reference.md's tables from the settings dataclasses' field metadata.

Each command's settings are a dataclass whose fields carry their `--help` text (`field.metadata["help"]`, and
`metadata["choices"]` where a key takes fixed values, `metadata["range"]` where it is bounded). This hook walks
them at build time with `core.settings.keys_of`, the walk `--help` is made from, so the page cannot drift from
`--help`: the page's `<!-- settings: NAME -->` markers are replaced by one table each.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
import typing
from collections.abc import Callable
from typing import Any

import dpokit
from dpokit.core.settings import keys_of

# the file `dpokit frontier --config` reads, and `dpokit eval`'s settings: not exported by the package root, so named
# by their modules
FRONTIER_MODULE = "dpokit.experiments.frontier_config"
EVAL_MODULE = "dpokit.eval.eval_config"

PAGE = "config-reference.md"
SIGNS = {"gt": "&gt;", "ge": "&gt;=", "le": "&lt;="}
MARKER = re.compile(r"<!-- settings: (\w+) -->")
SETTINGS: dict[str, Callable[[], type]] = {
    "Config": lambda: dpokit.Config,
    "EvalConfig": lambda: importlib.import_module(EVAL_MODULE).EvalConfig,
    "RewardModelConfig": lambda: dpokit.RewardModelConfig,
    "BonConfig": lambda: dpokit.BonConfig,
    "PPOConfig": lambda: dpokit.PPOConfig,
    "OnlineConfig": lambda: dpokit.OnlineConfig,
    "WinrateConfig": lambda: dpokit.WinrateConfig,
    "FrontierFile": lambda: importlib.import_module(FRONTIER_MODULE).FrontierFile,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replaces each `<!-- settings: NAME -->` of the config-reference page by NAME's table."""
    if page.file.src_uri != PAGE:
        return markdown

    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in SETTINGS:
            raise KeyError(f"{PAGE}: no settings dataclass named {name!r} (known: {', '.join(SETTINGS)})")
        return settings_table(SETTINGS[name]())

    return MARKER.sub(table, markdown)


def settings_table(cls: type) -> str:
    """A Markdown table of every key of the settings dataclass `cls`: key, type, default, meaning."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, spec, hint in keys_of(cls):
        meaning = _markdown_text(spec.metadata.get("help", ""))
        choices = spec.metadata.get("choices") or ()
        if choices:
            meaning += " (one of " + ", ".join(f"`{c!r}`" for c in choices) + ")"
        bounds = spec.metadata.get("range") or {}
        if bounds:
            meaning += " (" + ", ".join(f"{SIGNS[op]} {bound}" for op, bound in bounds.items()) + ")"
        rows.append(f"| `{key}` | `{_type_name(hint)}` | {_default(spec)} | {meaning} |")
    return "\n".join(rows)


def _type_name(hint: Any) -> str:
    """`int`, `str | None`, `list[str]`, `dict[str, Any]`: the type as it is written in the dataclass."""
    if hint is type(None):
        return "None"
    if hint is Any:
        return "Any"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{_type_name(origin)}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _default(spec: dataclasses.Field) -> str:
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return "required"
    text = repr(value)
    if isinstance(value, list) and len(text) > 30:
        return f"a list of {len(value)}"
    return f"`{text}`"


def _markdown_text(text: str) -> str:
    """Help text as a table cell: pipes, `<` and `*` escaped outside its `code` spans, which stay as they are."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = parts[i].replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts)
