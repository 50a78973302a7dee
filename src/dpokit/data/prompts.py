"""Prompt files for sampling commands (`generate`, the frontier, and the evaluations to come).

A `.txt` file holds one prompt per line (blank lines skipped). Any data file `read_records` reads (JSONL, JSON,
Parquet, CSV, a dataset) holds records with a "prompt" field: a string, or a list of {role, content} messages that
the chat template renders. Every problem names the file, line and field.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from dpokit.core.errors import DataError
from dpokit.data.formats import BadRecord, messages
from dpokit.data.sources import RawRecord, read_records

Prompt = str | list[dict]


def read_prompts(path: str) -> list[Prompt]:
    """The prompts of `path`, in file order.

    Raises:
        DataError: the file is missing or unreadable, a record has no usable "prompt", or there is no prompt at all.
    """
    if path.endswith(".txt"):
        if not Path(path).is_file():
            raise DataError("no such file", source=path)
        prompts: list[Prompt] = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with closing(read_records(path)) as records:
            prompts = [_prompt(raw) for raw in records]
    if not prompts:
        raise DataError("no prompts", source=path)
    return prompts


def _prompt(raw: RawRecord) -> Prompt:
    if raw.error is not None:
        raise DataError(raw.error, source=raw.source, line=raw.line, field=raw.field)
    try:
        return prompt_of(raw.record)
    except BadRecord as bad:
        raise DataError(bad.reason, source=raw.source, line=raw.line, field=bad.field) from None


def prompt_of(record: dict) -> Prompt:
    """A record's "prompt": a non-empty string, or a list of {role, content} messages.

    Raises:
        BadRecord: anything else (the loader adds file and line).
    """
    value = record.get("prompt")
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        return messages(record, "prompt")
    raise BadRecord("expected a non-empty string or a list of {role, content} messages", "prompt")
