"""Data files -> the train and eval examples a run trains on, streamed into flat arrays (data/store.py).

    prepared = prepare(cfg.data, tokenizer, Wants("sigmoid"), seed=0)
    prepared.train[0].prompt_ids, len(prepared.eval), prepared.notes

Call tree: `prepare` -> `stream_examples` (one record at a time) -> `fit` (what the loss consumes: pairs, ranked
lists, the chosen answer alone, unpaired examples) -> `encode_examples` (CHUNK examples per tokenizer call) ->
`fit_length` (cut to max_length) -> `StoreBuilder`; then the split (`held_out_positions`, over the source's
examples, so the pairs of one ranked list never land on both sides) -> `TokenStore.take`.

Memory stays flat in the number of records apart from the token arrays themselves (no text or Python int is kept
per example). The examples, ids, indices and notes are those of `prepare_plain`, the list-at-a-time path kept as
the reference a test compares with; one difference: with on_bad_record=error, the first bad example in file order
is the one reported (the plain path reports the training split's first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import islice

import numpy as np

from dpokit.core.errors import ConfigError
from dpokit.core.progress import transient
from dpokit.data import (
    LoadResult,
    Skip,
    held_out_positions,
    load_examples,
    ranked_to_pairs,
    split_examples,
    stream_examples,
)
from dpokit.data.config import DataConfig
from dpokit.data.records import Example
from dpokit.data.store import StoreBuilder, TokenStore
from dpokit.data.tokenize import (
    TokenizedExample,
    TokenizeResult,
    TokenizeSettings,
    encode_examples,
    fit_length,
    tokenize_examples,
)

CHUNK = 1024  # examples per tokenizer call: the fast tokenizers batch well by then
CONVERTED, EXPANDED = 1, 2  # what `fit` did to a source example: a pair made two unpaired ones; a list made pairs
PROMPT_CUT, RESPONSES_CUT, IDENTICAL, KEPT = 1, 2, 4, 8  # what `fit_length` did to a fitted example


@dataclass(frozen=True)
class Wants:
    """What the loss consumes, as far as data goes (`losses.Objective` answers these). `name` is for messages."""

    name: str
    chosen_only: bool = False  # Preferred-FT: the best response alone
    unpaired: bool = False  # KTO: one response and a desirable/undesirable label
    ranked: bool = False  # Plackett-Luce: whole ranked lists, all of one length
    responses: int | None = None  # exactly this many responses per prompt (TPO: gold, chosen, rejected)

    def __str__(self) -> str:
        return self.name


@dataclass
class Prepared:
    train: TokenStore
    eval: TokenStore
    notes: list[str] = field(default_factory=list)  # what was loaded, skipped, converted, truncated


def fit(ex: Example, wants: Wants) -> tuple[list[Example], int]:
    """One source example reshaped to what the loss consumes, and CONVERTED / EXPANDED / 0 (what was done)."""
    if ex.label is not None and not wants.unpaired:
        raise ConfigError(f"loss '{wants.name}' needs preference pairs, but the data is unpaired (prompt/completion/"
                          f"label, e.g. {ex.where}); use loss.name=kto")
    if wants.responses and len(ex.responses) != wants.responses:
        raise ConfigError(f"loss '{wants.name}' takes {wants.responses} ranked responses per prompt; {ex.where} has "
                          f"{len(ex.responses)}")
    if wants.chosen_only:  # the other responses are never computed
        return [replace(ex, responses=ex.responses[:1])], 0
    if wants.unpaired and ex.label is None:
        return [replace(ex, responses=(r,), label=k == 0) for k, r in enumerate((ex.responses[0], ex.responses[-1]))
                ], CONVERTED
    if not wants.ranked and len(ex.responses) > 2:
        return ranked_to_pairs(ex), EXPANDED
    return [ex], 0


def fit_notes(wants: Wants, done: int, fitted: int) -> list[str]:
    """What a split's notes say about `fit` (`done`: its flags or-ed over the split; `fitted`: examples made)."""
    notes = []
    if done & CONVERTED:
        notes.append(f"{wants}: each pair becomes a desirable (chosen) and an undesirable (rejected) example")
    if done & EXPANDED:
        notes.append(f"{wants}: ranked lists expanded into {fitted:,} pairs")
    return notes


def _settings(data: DataConfig) -> TokenizeSettings:
    return TokenizeSettings(data.max_length, data.max_prompt_length, data.prompt_truncation, data.on_bad_record)


class _Pass:
    """One pass over the source files: every fitted example goes into the store (or its skip into `skips`), and
    what is needed to split and report afterwards is kept per source example (`done`) and per fitted one."""

    def __init__(self, tokenizer, wants: Wants, settings: TokenizeSettings):
        self.tokenizer, self.wants, self.settings = tokenizer, wants, settings
        self.builder = StoreBuilder(len(tokenizer))
        self.done: list[int] = []  # per source example
        self.group: list[int] = []  # per fitted example: its source example
        self.flags: list[int] = []  # per fitted example: PROMPT_CUT | RESPONSES_CUT | IDENTICAL | KEPT
        self.skips: list[tuple[int, Skip]] = []  # (fitted example, why)
        self.counts: set[int] = set()

    def read(self, examples: Iterable[Example]) -> None:
        examples = iter(examples)
        while chunk := list(islice(examples, CHUNK)):
            fitted: list[Example] = []
            for ex in chunk:
                made, done = fit(ex, self.wants)
                self.group += [len(self.done)] * len(made)
                self.done.append(done)
                fitted += made
            self._check_ranked(fitted)
            for ex, (prompt, responses) in zip(fitted, encode_examples(fitted, self.tokenizer), strict=True):
                self._add(ex, fit_length(ex, len(self.flags), prompt, responses, self.settings))

    def _add(self, ex: Example, outcome) -> None:
        flags = PROMPT_CUT * outcome.prompt_cut | RESPONSES_CUT * outcome.responses_cut | IDENTICAL * outcome.identical
        if outcome.example is None:
            self.skips.append((len(self.flags), outcome.skip))
        else:
            self.builder.add(outcome.example, ex.source, ex.line)
            flags |= KEPT
        self.flags.append(flags)

    def _check_ranked(self, fitted: list[Example]) -> None:
        if not self.wants.ranked:
            return
        for ex in fitted:
            if len(ex.responses) not in self.counts:
                self.counts.add(len(ex.responses))
                if len(self.counts) > 1:
                    raise ConfigError(f"loss '{self.wants}' needs the same number of ranked responses in every "
                                      f"example; got {sorted(self.counts)} ({len(ex.responses)} at {ex.where})")


def prepare(data: DataConfig, tokenizer, wants: Wants, seed: int, progress: bool = False) -> Prepared:
    """Loads, validates, fits to the loss, tokenizes and splits `data.path` (and `data.eval_path`), streamed.

    Raises:
        ConfigError: bad settings, data the loss cannot use, or no training example left.
        DataError: a source cannot be read, or a bad record under on_bad_record=error (file, line, field).
    """
    notes: list[str] = []
    run = _Pass(tokenizer, wants, _settings(data))
    sources = [data.path, *([data.eval_path] if data.eval_path else [])]
    n_train = 0
    for i, path in enumerate(sources):
        loaded = LoadResult(examples=[])
        examples = stream_examples(path, loaded, format=data.format, on_bad_record=data.on_bad_record,
                                   prompt_marker=data.prompt_marker, tokenizer=tokenizer, split=data.split,
                                   limit=data.limit)
        run.read(transient(examples, f"read and tokenize {path}", progress))
        notes.append(loaded.report())
        n_train = n_train if i else len(run.done)
    held_out = np.zeros(len(run.done), dtype=bool)
    if data.eval_path:
        held_out[n_train:] = True
    elif data.eval_fraction > 0:
        held_out[held_out_positions(n_train, data.eval_fraction, seed)] = True
    store, group, flags = run.builder.build(), np.asarray(run.group, dtype=np.int64), np.asarray(run.flags)
    kept = (flags & KEPT) > 0
    splits = {}
    for name, side in (("train", ~held_out), ("eval", held_out)):
        rows = side[group]  # fitted examples of this split
        index = np.cumsum(rows) - 1  # position among the split's fitted examples, skipped ones included
        splits[name] = store.take(np.flatnonzero(rows[kept]), index[rows & kept])
        if rows.any():
            done = int(np.bitwise_or.reduce(np.asarray(run.done)[side])) if side.any() else 0
            notes += fit_notes(wants, done, int(rows.sum()))
            notes.append(f"{name}: {_report(splits[name], flags[rows], run.skips, rows)}")
    if not len(splits["train"]):
        raise ConfigError(f"no training examples left in {data.path}")
    return Prepared(splits["train"], splits["eval"], notes)


def _report(examples: TokenStore, flags: np.ndarray, skips: list[tuple[int, Skip]], rows: np.ndarray) -> str:
    """The split's line of `TokenizeResult.report`, from the per-example flags."""
    result = TokenizeResult(examples=examples, skipped=[skip for at, skip in skips if rows[at]],
                            prompts_truncated=int(((flags & PROMPT_CUT) > 0).sum()),
                            responses_truncated=int(((flags & RESPONSES_CUT) > 0).sum()),
                            identical_after_truncation=int(((flags & IDENTICAL) > 0).sum()))
    return result.report()


def prepare_plain(data: DataConfig, tokenizer, wants: Wants, seed: int) -> tuple[list[TokenizedExample],
                                                                                  list[TokenizedExample], list[str]]:
    """The same preparation with every example held as Python objects, one step at a time over whole lists:
    simple to read and slow on big data; `prepare` must give exactly what this gives (a test checks)."""
    notes: list[str] = []
    loaded = load_examples(data.path, format=data.format, on_bad_record=data.on_bad_record,
                           prompt_marker=data.prompt_marker, tokenizer=tokenizer, split=data.split, limit=data.limit)
    notes.append(loaded.report())
    train, held_out = loaded.examples, []
    if data.eval_path:
        other = load_examples(data.eval_path, format=data.format, on_bad_record=data.on_bad_record,
                              prompt_marker=data.prompt_marker, tokenizer=tokenizer, split=data.split,
                              limit=data.limit)
        notes.append(other.report())
        held_out = other.examples
    elif data.eval_fraction > 0:
        train, held_out = split_examples(train, data.eval_fraction, seed)
    out: dict[str, list[TokenizedExample]] = {"train": [], "eval": []}
    for name, examples in (("train", train), ("eval", held_out)):
        if not examples:
            continue
        fitted = [fit(ex, wants) for ex in examples]
        made = [ex for group, _ in fitted for ex in group]
        if wants.ranked and len(counts := Counter(len(ex.responses) for ex in made)) > 1:
            raise ConfigError(f"loss '{wants}' needs the same number of ranked responses; got {sorted(counts)}")
        notes += fit_notes(wants, int(np.bitwise_or.reduce([done for _, done in fitted])), len(made))
        result = tokenize_examples(made, tokenizer, _settings(data))
        notes.append(f"{name}: {result.report()}")
        out[name] = result.examples
    if not out["train"]:
        raise ConfigError(f"no training examples left in {data.path}")
    return out["train"], out["eval"], notes
