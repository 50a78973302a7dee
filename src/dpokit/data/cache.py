"""An on-disk cache of tokenized examples: a second run on the same data starts without reading or tokenizing it.

An entry is a directory named by its key (a hash of everything that decides the ids: the data files' bytes, the
tokenizer, every setting that changes them; the caller builds it with `key_of`) and holds, per split, flat integer
arrays in numpy's `.npy` format (read with `allow_pickle=False`: nothing executable) plus `manifest.json` with the
notes the run printed when it tokenized, each array's SHA-256 and the counts. An entry is written into a temporary
directory and renamed into place whole, so a run stopped mid-write leaves no entry; one whose files do not match their
manifest (truncated, altered) is reported, removed and rebuilt, never half-used.

    tokens.npy      int32, every example's prompt ids then its responses' ids, end to end
    shape.npy       int64 (N, 4): index, prompt length, number of responses, label (-1 none, 0, 1)
    lengths.npy     int64, each response's length, in order
    where.json      each example's "file:line"
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dpokit.data.tokenize import TokenizedExample

VERSION = 1  # of the tokenization rules and this layout: a change makes every older entry a miss


def root_of(cache_dir: str) -> Path:
    """The cache's directory: `cache_dir`, or `$DPOKIT_CACHE/tokenized` (default `~/.cache/dpokit/tokenized`)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("DPOKIT_CACHE", "~/.cache/dpokit")).expanduser() / "tokenized"


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


def save(root: str | Path, key: str, splits: dict[str, list[TokenizedExample]], notes: list[str]) -> Path:
    """Writes the entry `key` under `root` (atomically: a temporary directory renamed into place)."""
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        manifest: dict[str, Any] = {"version": VERSION, "notes": notes, "splits": {}}
        for name, examples in splits.items():
            manifest["splits"][name] = _write_split(tmp / name, examples)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class Entry(NamedTuple):
    """What `load` found: the splits and the notes of the run that tokenized them (None on a miss), and a message
    for the person running the job (where they came from, or why an entry was thrown away; None on a plain miss)."""

    splits: dict[str, list[TokenizedExample]] | None
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
        splits = {name: _read_split(entry / name, info) for name, info in manifest["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError) as err:
        shutil.rmtree(entry, ignore_errors=True)
        return Entry(None, [], f"the tokenization cache entry {entry} was unusable ({err}): removed, tokenizing again")
    return Entry(splits, list(manifest["notes"]), f"tokenized examples read from the cache {entry}")


def _write_split(folder: Path, examples: Sequence[TokenizedExample]) -> dict[str, Any]:
    folder.mkdir()
    tokens = np.fromiter((t for ex in examples for ids in (ex.prompt_ids, *ex.response_ids) for t in ids),
                         dtype=np.int32)
    shape = np.array([[ex.index, len(ex.prompt_ids), len(ex.response_ids), -1 if ex.label is None else int(ex.label)]
                      for ex in examples], dtype=np.int64).reshape(-1, 4)
    lengths = np.fromiter((len(ids) for ex in examples for ids in ex.response_ids), dtype=np.int64)
    arrays = {"tokens.npy": tokens, "shape.npy": shape, "lengths.npy": lengths}
    for name, array in arrays.items():
        np.save(folder / name, array, allow_pickle=False)
    (folder / "where.json").write_text(json.dumps([ex.where for ex in examples]))
    files = [*arrays, "where.json"]
    return {"examples": len(examples), "sha256": {name: file_digest(folder / name) for name in files}}


def _read_split(folder: Path, info: dict[str, Any]) -> list[TokenizedExample]:
    files = {}
    for name, digest in info["sha256"].items():  # each file read once: checked, then parsed from the same bytes
        files[name] = (folder / name).read_bytes()
        if hashlib.sha256(files[name]).hexdigest() != digest:
            raise ValueError(f"{folder / name} does not match its checksum")
    tokens, shape, lengths = (np.load(io.BytesIO(files[name]), allow_pickle=False).tolist()
                              for name in ("tokens.npy", "shape.npy", "lengths.npy"))
    where = json.loads(files["where.json"])
    if len(shape) != info["examples"] or len(where) != len(shape):
        raise ValueError(f"{folder} holds {len(shape)} examples, its manifest {info['examples']}")
    out, at, response = [], 0, 0
    for (index, prompt_len, responses, label), place in zip(shape, where, strict=True):
        prompt = tuple(tokens[at:at + prompt_len])
        at += prompt_len
        ids = []
        for length in lengths[response:response + responses]:
            ids.append(tuple(tokens[at:at + length]))
            at += length
        response += responses
        out.append(TokenizedExample(index, prompt, tuple(ids), None if label < 0 else bool(label), place))
    if at != len(tokens):
        raise ValueError(f"{folder}: {len(tokens) - at} token ids left over")
    return out
