"""Local paths versus hub names: the one rule every config check and data reader uses."""

from __future__ import annotations

import os
from pathlib import Path

from dpokit.core.errors import ConfigError

# The data files dpokit reads (data/sources.py reads them).
FILE_SUFFIXES = (".jsonl.gz", ".jsonl", ".json", ".parquet", ".csv")

# Suffixes that mark a path as a local file even though we cannot read it: a missing "data.txt" should say
# "no such file", not send the name to the hub.
_FILE_LIKE_SUFFIXES = {".txt", ".tsv", ".gz", ".arrow", ".xlsx", ".yaml", ".yml", ".zip", ".tar", ".pkl"}


def looks_local(path: str) -> bool:
    """True if `path` cannot be a hub name ("name" or "owner/name"), so a missing one is simply a missing file.

    The one rule for data and model paths alike (config checks use it too).

    >>> [looks_local(p) for p in ("org/data", "./data", "a/b/c", "~/x", "hh.jsonl.gz", "notes.txt")]
    [False, True, True, True, True, True]
    """
    lower = path.lower()
    return (
        os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.replace(os.sep, "/").count("/") > 1
        or Path(lower).suffix in _FILE_LIKE_SUFFIXES
        or lower.endswith(FILE_SUFFIXES)
    )


def check_local_path(key: str, value: str | None) -> None:
    """A path that names something on this machine (see `looks_local`) must exist; others may be hub names."""
    if value and looks_local(value) and not Path(value).expanduser().exists():
        raise ConfigError(f"config key '{key}': file not found: {value}")
