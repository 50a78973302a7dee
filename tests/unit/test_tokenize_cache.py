"""The tokenization cache (data/cache.py through trainer.assembly.prepare_data): a second run reads back exactly the
examples the first tokenized; any change of key tokenizes again; a damaged or half-written entry is never used."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dpokit.core.errors import DataError
from dpokit.losses import parse_objective
from dpokit.models.tiny import train_bpe_tokenizer
from dpokit.trainer.assembly import prepare_data
from dpokit.trainer.config import Config

ROWS = [{"prompt": f"Human: question {i}?\n\nAssistant:", "chosen": f" a good answer {i}", "rejected": f" bad {i}"}
        for i in range(12)]


@pytest.fixture()
def setup(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = Config()
    cfg.data.path, cfg.data.cache_dir, cfg.data.eval_fraction = str(data), str(tmp_path / "cache"), 0.25
    cfg.train.progress = False
    return cfg, data, tmp_path / "cache"


def entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []


def test_a_second_run_reads_back_the_same_examples(setup, tokenizer):
    cfg, _, cache = setup
    objective = parse_objective("sigmoid")
    first = prepare_data(cfg, tokenizer, objective)
    assert len(entries(cache)) == 1 and not any("from the cache" in n for n in first.notes)
    second = prepare_data(cfg, tokenizer, objective)
    assert (second.train, second.eval) == (first.train, first.eval)  # index, ids, labels, file:line, all equal
    assert second.notes[:-1] == first.notes and "read from the cache" in second.notes[-1]
    assert len(first.train) == 9 and len(first.eval) == 3


@pytest.mark.parametrize("change", ["max_length", "seed", "loss", "file", "tokenizer"])
def test_any_change_of_key_tokenizes_again(setup, tokenizer, change):
    cfg, data, cache = setup
    objective = parse_objective("sigmoid")
    prepare_data(cfg, tokenizer, objective)
    if change == "max_length":
        cfg.data.max_length = 16
    elif change == "seed":
        cfg.train.seed = 1  # a different eval split
    elif change == "loss":
        objective = parse_objective("sft")  # chosen only: other examples
    elif change == "file":
        data.write_text(data.read_text().replace("question 3", "question three"))
    else:
        tokenizer = train_bpe_tokenizer([r["prompt"] + r["chosen"] for r in ROWS], vocab_size=300)
    again = prepare_data(cfg, tokenizer, objective)
    assert len(entries(cache)) == 2 and not any("from the cache" in n for n in again.notes)


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_a_damaged_entry_is_removed_and_rebuilt_never_used(setup, tokenizer, damage):
    cfg, _, cache = setup
    objective = parse_objective("sigmoid")
    fresh = prepare_data(cfg, tokenizer, objective)
    (entry,) = entries(cache)
    tokens = entry / "tokens.npy"
    if damage == "truncated":
        tokens.write_bytes(tokens.read_bytes()[:-40])
    elif damage == "altered":
        array = np.load(tokens)
        array[3] += 1
        np.save(tokens, array)
    else:
        (entry / "sources.json").unlink()
    again = prepare_data(cfg, tokenizer, objective)
    assert (again.train, again.eval) == (fresh.train, fresh.eval)
    assert "unusable" in again.notes[-1] and str(entry) in again.notes[-1]
    third = prepare_data(cfg, tokenizer, objective)  # the rebuilt entry serves the next run
    assert "read from the cache" in third.notes[-1] and third.train == fresh.train


def test_rows_pointing_outside_the_arrays_are_refused_even_with_good_checksums(setup, tokenizer):
    """A checksum proves the bytes are those written, not that they were written right: bounds are checked too."""
    cfg, _, cache = setup
    objective = parse_objective("sigmoid")
    fresh = prepare_data(cfg, tokenizer, objective)
    (entry,) = entries(cache)
    rows = np.load(entry / "train.npy")
    rows[-1, 1] += 10_000  # the last example's prompt runs past the end of tokens.npy
    np.save(entry / "train.npy", rows)
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["sha256"]["train.npy"] = hashlib.sha256((entry / "train.npy").read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    again = prepare_data(cfg, tokenizer, objective)
    assert "run past the end" in again.notes[-1] and again.train == fresh.train


def test_a_half_written_entry_is_not_an_entry(setup, tokenizer):
    """A run stopped while writing leaves only its temporary directory (renamed into place only when complete)."""
    cfg, _, cache = setup
    objective = parse_objective("sigmoid")
    prepare_data(cfg, tokenizer, objective)
    (entry,) = entries(cache)
    (entry / "manifest.json").unlink()  # as if the rename had not happened: no manifest, no entry
    again = prepare_data(cfg, tokenizer, objective)
    assert not any("from the cache" in n for n in again.notes) and (entry / "manifest.json").is_file()


def test_bad_records_are_reported_as_before_from_the_cache_too(setup, tokenizer):
    cfg, data, cache = setup
    data.write_text(data.read_text() + '{"prompt": "x", "chosen": 3}\n')
    objective = parse_objective("sigmoid")
    for _ in range(2):  # error: stops at the record, naming file and line, and writes no entry
        with pytest.raises(DataError, match=r"pairs.jsonl:13"):
            prepare_data(cfg, tokenizer, objective)
    assert entries(cache) == []
    cfg.data.on_bad_record = "skip"
    first = prepare_data(cfg, tokenizer, objective)
    second = prepare_data(cfg, tokenizer, objective)
    assert any("skipped 1" in n for n in first.notes)
    assert second.notes[:-1] == first.notes  # the same report, read back


def test_the_cache_can_be_turned_off(setup, tokenizer):
    cfg, _, cache = setup
    cfg.data.cache = False
    prepare_data(cfg, tokenizer, parse_objective("sigmoid"))
    assert entries(cache) == []
