"""The data layer's entry points: load a source into validated `Example`s, and split them for evaluation.

    result = load_examples("data/hh.jsonl.gz", on_bad_record="skip")
    print(result.report())   # loaded 2,303 examples (implicit) from data/hh.jsonl.gz; skipped 9: ...
    train, eval = split_examples(result.examples, eval_fraction=0.05, seed=0)

Call tree: `load_examples` -> `sources.read_records` (file/dataset -> `RawRecord`s) -> `formats.detect_format`
(auto only, on the first readable record) -> `formats.parse_record` (dict -> `Example`, or `BadRecord`).

    sources.py   files (JSONL, JSON, Parquet, CSV, gzip) and `datasets` -> raw records, naming file and line
    formats.py   raw records -> `Example`s: explicit, implicit, conversational, ranked, unpaired
    records.py   `Example`: a prompt and its K responses, best first
    chat.py      chat templates: rendering prompts and replies, end-of-turn tokens
    prompts.py   prompt files for sampling (.txt or records with a prompt)
    tokenize.py  the one prompt encoder; examples -> token ids, truncated
    collate.py   padded batches
    packing.py   packed rows, each prompt once, attention confined to each sequence
    batching.py  `Layout` and `batches`: plain or packed, by one setting
    config.py    the `data.*` settings
    store.py     `TokenStore`: tokenized examples as flat integer arrays, read out one by one
    prepare.py   files -> train/eval stores, streamed: load, fit to the loss, tokenize, split
    cache.py     the on-disk cache of prepared stores (checksummed, written atomically)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, NamedTuple

from dpokit.core.errors import ConfigError, DataError
from dpokit.data.formats import (
    DEFAULT_PROMPT_MARKER,
    FORMATS,
    BadRecord,
    FormatOptions,
    detect_format,
    parse_record,
    ranked_to_pairs,
    require_chat_tokenizer,
)
from dpokit.data.records import Example
from dpokit.data.sources import RawRecord, read_records

BAD_RECORD_POLICIES = ("error", "skip")
SKIP_HINT = "data.on_bad_record=skip counts and skips such records (and reports them)"

__all__ = [
    "BAD_RECORD_POLICIES",
    "FORMATS",
    "Example",
    "LoadResult",
    "RawRecord",
    "Skip",
    "Split",
    "load_examples",
    "ranked_to_pairs",
    "read_records",
    "split_examples",
    "stream_examples",
]


@dataclass(frozen=True)
class Skip:
    """Where a record was skipped and why, so a user can open the file at that line."""

    source: str
    line: int
    field: str | None
    reason: str


@dataclass
class LoadResult:
    """What `load_examples` produced.

    Attributes:
        examples: the usable records, in source order.
        skipped: the records left out under `on_bad_record="skip"`, in source order.
        format: the resolved format (never "auto").
        source: the path or dataset name that was read.
    """

    examples: list[Example]
    skipped: list[Skip] = dataclass_field(default_factory=list)
    format: str = ""
    source: str = ""
    loaded: int = 0  # usable examples read; `stream_examples` counts them without keeping them in `examples`

    def report(self) -> str:
        """One line for the log: how many examples loaded, how many skipped and why (grouped by reason)."""
        n = len(self.examples) or self.loaded
        noun = "example" if n == 1 else "examples"
        head = f"loaded {n:,} {noun} ({self.format}) from {self.source}"
        if not self.skipped:
            return f"{head}; skipped 0"
        return f"{head}; skipped {len(self.skipped):,}: {summarize_skips(self.skipped)}"


def summarize_skips(skipped: list[Skip]) -> str:
    """'5 × chosen and rejected prompts disagree (first: x.jsonl:123), ...', most frequent reason first."""
    groups: dict[str, list[Skip]] = {}
    for skip in skipped:
        groups.setdefault(skip.reason, []).append(skip)
    ordered = sorted(groups.values(), key=len, reverse=True)  # stable: equal counts keep first-seen order
    return ", ".join(f"{len(g):,} × {g[0].reason} (first: {g[0].source}:{g[0].line})" for g in ordered)


def load_examples(
    path: str,
    *,
    format: str = "auto",
    on_bad_record: str = "error",
    prompt_marker: str = DEFAULT_PROMPT_MARKER,
    tokenizer: Any = None,
    split: str = "train",
    limit: int | None = None,
) -> LoadResult:
    """Reads `path` and validates every record as `format`.

    Args:
        path: a .jsonl/.jsonl.gz/.json/.parquet/.csv file, a dataset directory, or a hub dataset name.
        format: one of `FORMATS`; "auto" picks it from the first readable record's keys, and every later record
            must then fit that same format.
        on_bad_record: "error" raises at the first bad record; "skip" records it in `LoadResult.skipped`.
        prompt_marker: implicit format: the prompt ends after the last occurrence of this in `chosen`.
        tokenizer: conversational format: its chat template renders the messages.
        split: dataset split to read (plain files have none).
        limit: stop after this many usable examples (reading stops too, so a huge file is cheap to sample).

    Raises:
        ConfigError: an unknown format or policy, a bad limit, or conversational data without a chat tokenizer.
        DataError: the source cannot be read, a record is bad under "error", or no record is usable.
    """
    result = LoadResult(examples=[], format=format, source=str(path))
    result.examples.extend(stream_examples(path, result, format=format, on_bad_record=on_bad_record,
                                           prompt_marker=prompt_marker, tokenizer=tokenizer, split=split, limit=limit))
    return result


def stream_examples(
    path: str,
    result: LoadResult,
    *,
    format: str = "auto",
    on_bad_record: str = "error",
    prompt_marker: str = DEFAULT_PROMPT_MARKER,
    tokenizer: Any = None,
    split: str = "train",
    limit: int | None = None,
) -> Iterator[Example]:
    """`load_examples`, one example at a time: memory stays flat however big the source. `result` collects the
    skips, the count and the resolved format as the examples go by (it keeps no example). Options and errors are
    those of `load_examples`; bad options are refused at the call, before the first `next()`."""
    _check_options(format, on_bad_record, prompt_marker, limit)
    if format == "conversational":
        require_chat_tokenizer(tokenizer)
    result.format, result.source = format, str(path)
    records = read_records(str(path), split=split)
    return _stream(records, result, FormatOptions(prompt_marker=prompt_marker, tokenizer=tokenizer), on_bad_record,
                   limit)


def _stream(records: Iterator[RawRecord], result: LoadResult, options: FormatOptions, on_bad_record: str,
            limit: int | None) -> Iterator[Example]:
    with closing(records):
        for raw in records:
            try:
                example = _parse(raw, result, options)
            except BadRecord as bad:
                skip = Skip(raw.source, raw.line, bad.field, bad.reason)
                if on_bad_record == "error":
                    raise DataError(skip.reason, source=skip.source, line=skip.line, field=skip.field,
                                    hint=SKIP_HINT) from None
                result.skipped.append(skip)
                continue
            result.loaded += 1
            yield example
            if limit is not None and result.loaded >= limit:
                break
    if not result.loaded:
        raise DataError(_nothing_usable(result.skipped), source=result.source)


def _check_options(format: str, on_bad_record: str, prompt_marker: str, limit: int | None) -> None:
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ConfigError(f"unknown on_bad_record {on_bad_record!r}; expected one of {', '.join(BAD_RECORD_POLICIES)}")
    if not prompt_marker:
        raise ConfigError("prompt_marker must not be empty")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")


def _parse(raw: RawRecord, result: LoadResult, options: FormatOptions) -> Example:
    """Parses one raw record; under "auto" the first readable record fixes `result.format` for all the rest."""
    if raw.error is not None:
        raise BadRecord(raw.error, raw.field)
    if result.format == "auto":
        detected = detect_format(raw.record)
        if detected == "conversational":
            require_chat_tokenizer(options.tokenizer)
        result.format = detected
    return parse_record(raw.record, result.format, source=raw.source, line=raw.line, options=options)


def _nothing_usable(skipped: list[Skip]) -> str:
    if not skipped:
        return "no usable examples: the source has no records"
    return f"no usable examples: {len(skipped):,} skipped ({summarize_skips(skipped)})"


class Split(NamedTuple):
    """Train and eval examples, each in the original order."""

    train: list[Example]
    eval: list[Example]


def split_examples(examples: list[Example], eval_fraction: float, seed: int) -> Split:
    """Holds out `round(n * eval_fraction)` examples chosen by a seeded permutation.

    `random.Random(seed)` rather than torch: the split must not change with the torch version or device. At least one
    eval example is held out when `eval_fraction > 0` and n > 1, and at least one stays for training. Split before
    `ranked_to_pairs`, so that pairs from one ranked list never land on both sides.

    Raises:
        ConfigError: `eval_fraction` is outside [0, 1).
    """
    held_out = set(held_out_positions(len(examples), eval_fraction, seed))
    return Split(
        train=[ex for i, ex in enumerate(examples) if i not in held_out],
        eval=[ex for i, ex in enumerate(examples) if i in held_out],
    )


def held_out_positions(n: int, eval_fraction: float, seed: int) -> list[int]:
    """The positions `split_examples` holds out of n examples (in no particular order).

    Raises:
        ConfigError: `eval_fraction` is outside [0, 1).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n_eval = round(n * eval_fraction)
    if eval_fraction > 0 and n > 1:
        n_eval = min(max(n_eval, 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:n_eval]
