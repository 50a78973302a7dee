"""Tokenized examples as flat integer arrays: ~2-4 bytes a token instead of a Python int's ~36.

A `TokenStore` is a read-only sequence of `TokenizedExample`s, built on demand from three arrays shared by every
split of one preparation (and written to the tokenization cache as they are, data/cache.py):

    tokens    uint16 (int32 when the vocabulary needs it): each example's prompt ids, then its responses' ids
    lengths   int32: each response's length, every example's in turn
    rows      int64 (N, 8), one row per example: COLUMNS

A split is the same arrays with its own `rows`: `store.take(positions, index)` selects rows and renumbers them,
copying no token.

    >>> import numpy as np
    >>> builder = StoreBuilder(vocab_size=100)
    >>> builder.add(TokenizedExample(0, (5, 6), ((7, 2), (8, 9, 2))), source="a.jsonl", line=3)
    >>> store = builder.build()
    >>> store[0].response_ids, store[0].where
    (((7, 2), (8, 9, 2)), 'a.jsonl:3')
    >>> store.num_tokens().tolist()  # the prompt counted once per response
    [9]
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterator, Sequence
from typing import overload

import numpy as np

from dpokit.data.tokenize import TokenizedExample

COLUMNS = ("start", "prompt_length", "first_response", "responses", "index", "label", "source", "line")
START, PROMPT, FIRST, K, INDEX, LABEL, SOURCE, LINE = range(len(COLUMNS))


class TokenStore(Sequence[TokenizedExample]):
    """Examples read out of flat arrays; indexing builds the `TokenizedExample` (a few microseconds)."""

    def __init__(self, tokens: np.ndarray, lengths: np.ndarray, rows: np.ndarray, sources: Sequence[str]):
        self.tokens, self.lengths, self.rows, self.sources = tokens, lengths, rows.reshape(-1, len(COLUMNS)), sources

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> TokenizedExample: ...

    @overload
    def __getitem__(self, i: slice) -> TokenStore: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return TokenStore(self.tokens, self.lengths, self.rows[i], self.sources)
        start, prompt, first, k, index, label, source, line = self.rows[i].tolist()
        lengths = self.lengths[first:first + k].tolist()
        ids = self.tokens[start:start + prompt + sum(lengths)].tolist()
        responses, at = [], prompt
        for length in lengths:
            responses.append(tuple(ids[at:at + length]))
            at += length
        return TokenizedExample(index, tuple(ids[:prompt]), tuple(responses), None if label < 0 else bool(label),
                                f"{self.sources[source]}:{line}")

    def __iter__(self) -> Iterator[TokenizedExample]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same examples (a list of them, or another store)."""
        if not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable-equal, like a list

    def take(self, positions: np.ndarray, index: np.ndarray | None = None) -> TokenStore:
        """The rows at `positions`, in that order, renumbered `index` (default: kept as they are)."""
        rows = self.rows[positions].copy()
        if index is not None:
            rows[:, INDEX] = index
        return TokenStore(self.tokens, self.lengths, rows, self.sources)

    def num_tokens(self) -> np.ndarray:
        """(N,) each example's tokens with its prompt counted once per response, as `TokenizedExample.num_tokens`."""
        ends = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        first, k = self.rows[:, FIRST], self.rows[:, K]
        return self.rows[:, PROMPT] * k + ends[first + k] - ends[first]

    def digest(self) -> str:
        """A hash of every id and index these examples hold (what the reference log-prob cache is keyed by)."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.tokens, self.lengths, self.rows[:, :INDEX + 1]):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()


def token_counts(examples: Sequence[TokenizedExample]) -> list[int]:
    """Each example's `num_tokens`: from the arrays for a store, without building its examples."""
    if isinstance(examples, TokenStore):
        return examples.num_tokens().tolist()
    return [ex.num_tokens for ex in examples]


def max_index(examples: Sequence[TokenizedExample]) -> int:
    """The largest `index` (a table of every example's values needs one more row than this)."""
    if isinstance(examples, TokenStore):
        return int(examples.rows[:, INDEX].max())
    return max(ex.index for ex in examples)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it (GPT-2, SmolLM2, Mistral), else int32."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


class StoreBuilder:
    """Appends examples one by one in compact buffers (no Python int kept per token); `build()` makes the store."""

    def __init__(self, vocab_size: int):
        self.dtype = token_dtype(vocab_size)
        self._chunks: list[np.ndarray] = []
        self._pending = array("q")  # ids not yet moved into a chunk
        self._size = 0
        self._lengths = array("q")
        self._rows = array("q")
        self._sources: dict[str, int] = {}

    def add(self, ex: TokenizedExample, source: str, line: int) -> None:
        label = -1 if ex.label is None else int(ex.label)
        source_id = self._sources.setdefault(source, len(self._sources))
        self._rows.extend((self._size, len(ex.prompt_ids), len(self._lengths), len(ex.response_ids), ex.index, label,
                           source_id, line))
        self._pending.extend(ex.prompt_ids)
        for ids in ex.response_ids:
            self._pending.extend(ids)
            self._lengths.append(len(ids))
        self._size += len(ex.prompt_ids) + sum(len(r) for r in ex.response_ids)
        if len(self._pending) >= 1 << 20:
            self._flush()

    def __len__(self) -> int:
        return len(self._rows) // len(COLUMNS)

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append(np.frombuffer(self._pending, dtype=np.int64).astype(self.dtype))
            self._pending = array("q")

    def build(self) -> TokenStore:
        self._flush()
        tokens = np.concatenate(self._chunks) if self._chunks else np.zeros(0, self.dtype)
        self._chunks = []
        return TokenStore(tokens, np.frombuffer(self._lengths, dtype=np.int64).astype(np.int32),
                          np.frombuffer(self._rows, dtype=np.int64).copy(), tuple(self._sources))
