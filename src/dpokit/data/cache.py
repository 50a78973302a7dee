"""An on-disk cache of tokenized examples: a second run on the same data starts without reading or tokenizing it.

An entry is a directory named by its key (a hash of everything that decides the ids: the data files' bytes, the
tokenizer, every setting that changes them; the caller builds it with `key_of`) and holds the arrays of the splits'
`TokenStore`s (data/store.py) in numpy's `.npy` format (read with `allow_pickle=False`: nothing executable) plus
`manifest.json` with the notes the run printed when it tokenized, each file's SHA-256 and the counts. An entry is
written into a temporary directory and renamed into place whole, so a run stopped mid-write leaves no entry; one whose
files do not match their manifest (truncated, altered) is reported, removed and rebuilt, never half-used.

    tokens.npy      uint16 or int32: every example's prompt ids then its responses' ids, end to end (all splits)
    lengths.npy     int32: each response's length
    sources.json    the files the examples came from (a row's `source` column indexes this)
    <split>.npy     int64 (N, 8): the split's rows (store.COLUMNS)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dpokit.data.store import COLUMNS, FIRST, PROMPT, SOURCE, START, K, TokenStore

VERSION = 2  # of the tokenization rules and this layout: a change makes every older entry a miss


def root_of(cache_dir: str, kind: str = "tokenized") -> Path:
    """A cache's directory: `cache_dir`, or `$DPOKIT_CACHE/<kind>` (default `~/.cache/dpokit/<kind>`): "tokenized"
    for this cache, "reference" for the reference log-probs (lm/reference.py)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("DPOKIT_CACHE", "~/.cache/dpokit")).expanduser() / kind


def key_of(parts: dict[str, Any]) -> str:
    """The entry name for these parts (JSON-able: settings, digests), stable across runs and machines."""
    text = json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """What decides a tokenizer's ids: its vocabulary and rules, special tokens, chat template, and padding side."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = [backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())),
             repr(getattr(tokenizer, "chat_template", None)), repr(tokenizer.special_tokens_map),
             repr(getattr(tokenizer, "padding_side", None)), type(tokenizer).__name__]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def save(root: str | Path, key: str, splits: dict[str, TokenStore], notes: list[str]) -> Path:
    """Writes the entry `key` under `root` (atomically: a temporary directory renamed into place). The splits must
    share their arrays (as one `prepare` makes them): those are written once."""
    first = next(iter(splits.values()))
    if any(s.tokens is not first.tokens or s.lengths is not first.lengths for s in splits.values()):
        raise ValueError("the splits of one cache entry must share their token arrays")
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        arrays = {"tokens.npy": first.tokens, "lengths.npy": first.lengths,
                  **{f"{name}.npy": store.rows for name, store in splits.items()}}
        for name, array in arrays.items():
            np.save(tmp / name, array, allow_pickle=False)
        (tmp / "sources.json").write_text(json.dumps(list(first.sources)))
        manifest = {"version": VERSION, "notes": notes, "splits": {name: len(s) for name, s in splits.items()},
                    "sha256": {name: file_digest(tmp / name) for name in [*arrays, "sources.json"]}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class Entry(NamedTuple):
    """What `load` found: the splits and the notes of the run that tokenized them (None on a miss), and a message
    for the person running the job (where they came from, or why an entry was thrown away; None on a plain miss)."""

    splits: dict[str, TokenStore] | None
    notes: list[str]
    message: str | None


def load(root: str | Path, key: str) -> Entry:
    """The entry `key` under `root`. One that fails its checks (a file missing, truncated or altered) is removed:
    the caller tokenizes afresh and saves a new one."""
    entry = Path(root).expanduser() / key
    if not (entry / "manifest.json").is_file():
        return Entry(None, [], None)
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest.get("version") != VERSION:
            raise ValueError(f"format version {manifest.get('version')}, expected {VERSION}")
        splits = _read(entry, manifest)
    except (OSError, ValueError, KeyError, TypeError) as err:
        shutil.rmtree(entry, ignore_errors=True)
        return Entry(None, [], f"the tokenization cache entry {entry} was unusable ({err}): removed, tokenizing again")
    return Entry(splits, list(manifest["notes"]), f"tokenized examples read from the cache {entry}")


def _read(entry: Path, manifest: dict[str, Any]) -> dict[str, TokenStore]:
    files = {}
    for name, digest in manifest["sha256"].items():  # each file read once: checked, then parsed from the same bytes
        files[name] = (entry / name).read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise ValueError(f"{entry / name} does not match its checksum")
    tokens, lengths = (np.load(io.BytesIO(files[name]), allow_pickle=False) for name in ("tokens.npy", "lengths.npy"))
    sources = tuple(json.loads(files["sources.json"]))
    out = {}
    for name, count in manifest["splits"].items():
        rows = np.load(io.BytesIO(files[f"{name}.npy"]), allow_pickle=False)
        if rows.shape != (count, len(COLUMNS)):
            raise ValueError(f"{entry / name}.npy holds {rows.shape} rows, its manifest ({count}, {len(COLUMNS)})")
        out[name] = TokenStore(tokens, lengths, rows, sources)
    _check_bounds(out, len(tokens), len(lengths), len(sources))
    return out


def _check_bounds(splits: dict[str, TokenStore], tokens: int, lengths: int, sources: int) -> None:
    """Every row points inside the arrays (a checksum proves the bytes, not that they were written right)."""
    for name, store in splits.items():
        rows = store.rows
        if not len(rows):
            continue
        first, k = rows[:, FIRST], rows[:, K]
        ends = np.concatenate([[0], np.cumsum(store.lengths, dtype=np.int64)])
        if (first < 0).any() or (first + k > lengths).any() or (rows[:, SOURCE] >= sources).any():
            raise ValueError(f"split {name}: a row points outside the arrays")
        if (rows[:, START] + rows[:, PROMPT] + ends[first + k] - ends[first] > tokens).any():
            raise ValueError(f"split {name}: a row's tokens run past the end of tokens.npy")
