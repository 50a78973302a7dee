"""The streamed preparation (data/prepare.py into data/store.py) gives exactly what the list-at-a-time path gives:
the same examples, ids, indices, labels, file:line and notes, on the real HH file and on every data shape a loss
can ask for; and its store reads back like the examples it was built from."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dpokit.core.errors import ConfigError, DataError
from dpokit.data.config import DataConfig
from dpokit.data.prepare import CHUNK, Wants, prepare, prepare_plain
from dpokit.data.store import StoreBuilder, token_counts
from dpokit.data.tokenize import TokenizedExample

SIGMOID, SFT, KTO, PL = Wants("sigmoid"), Wants("sft", chosen_only=True), Wants("kto", unpaired=True), \
    Wants("plackett_luce", ranked=True)


def same(data: DataConfig, tokenizer, wants: Wants, seed: int = 0):
    streamed = prepare(data, tokenizer, wants, seed)
    train, held_out, notes = prepare_plain(data, tokenizer, wants, seed)
    assert list(streamed.train) == train and list(streamed.eval) == held_out
    assert streamed.notes == notes
    assert token_counts(streamed.train) == [ex.num_tokens for ex in train]
    return streamed


@pytest.mark.parametrize("wants", [SIGMOID, SFT, KTO], ids=str)
@pytest.mark.parametrize("cut", ["none", "short"])
def test_the_hh_file_prepares_as_on_the_plain_path(hh_path, tokenizer, wants, cut):
    """2,312 real pairs (more than two tokenizer chunks), an eval split, and with `short` prompts and responses cut."""
    data = DataConfig(path=str(hh_path), eval_fraction=0.1, on_bad_record="skip")
    if cut == "short":
        data.max_length, data.max_prompt_length = 48, 40
    prepared = same(data, tokenizer, wants, seed=3)
    assert len(prepared.train) + len(prepared.eval) > 2_200 > 2 * CHUNK


def test_ranked_lists_split_whole_and_skips_keep_their_index(tmp_path, tokenizer):
    """Pairs of one ranked list stay on one side; a prompt with no room is skipped yet keeps its index slot."""
    rows = [{"prompt": f"Q{i} " + "long words " * (40 if i % 5 == 0 else 1), "responses": [f" a{i}", f" b{i}", " c"]}
            for i in range(30)]
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(path=str(path), eval_fraction=0.3, max_length=24, prompt_truncation="none",
                      on_bad_record="skip")
    for wants in (SIGMOID, PL):
        prepared = same(data, tokenizer, wants, seed=1)
        assert prepared.train[-1].index > len(prepared.train) - 1  # skipped examples hold their slots
        lines = {ex.where for ex in prepared.train} & {ex.where for ex in prepared.eval}
        assert not lines


def test_an_eval_file_and_a_limit(tmp_path, hh_path, tokenizer):
    rows = [{"prompt": "Human: hi?\n\nAssistant:", "chosen": " hello", "rejected": " go"}] * 3
    other = tmp_path / "eval.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(path=str(hh_path), eval_path=str(other), limit=100, on_bad_record="skip")
    prepared = same(data, tokenizer, SIGMOID)
    assert (len(prepared.train), len(prepared.eval)) == (100, 3)
    assert prepared.eval[0].where == f"{other}:1" and [ex.index for ex in prepared.eval] == [0, 1, 2]


def test_errors_name_the_record_at_once(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "Q", "chosen": " a", "rejected": " b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "Q", "chosen": 3}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:2"):
        prepare(DataConfig(path=str(path)), tokenizer, SIGMOID, 0)
    lists = [{"prompt": "Q", "responses": [" a", " b"]}, {"prompt": "Q", "responses": [" a", " b", " c"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lists))
    with pytest.raises(ConfigError, match=r"\[2, 3\] \(3 at .*pairs.jsonl:2\)"):
        prepare(DataConfig(path=str(path), format="ranked"), tokenizer, PL, 0)
    path.write_text(json.dumps({"prompt": "Q", "completion": " a", "label": True}) + "\n")
    with pytest.raises(ConfigError, match=r"unpaired .*pairs.jsonl:1"):
        prepare(DataConfig(path=str(path)), tokenizer, SIGMOID, 0)


def test_the_store_reads_back_what_was_added_in_either_token_width():
    examples = [TokenizedExample(7, (1, 70_000 % 65_000, 3), ((4,), (5, 6, 2)), None, "x.jsonl:1"),
                TokenizedExample(8, (9,), ((2,),), True, "y.jsonl:4"),
                TokenizedExample(9, (), ((1, 2),), False, "x.jsonl:9")]
    for vocab in (300, 100_000):
        builder = StoreBuilder(vocab)
        for ex in examples:
            source, line = ex.where.split(":")
            builder.add(ex, source, int(line))
        store = builder.build()
        assert store.tokens.dtype == (np.uint16 if vocab == 300 else np.int32)
        assert list(store) == examples and store[1:] == examples[1:]
        taken = store.take(np.array([2, 0]), np.array([0, 1]))
        assert taken == [replace(examples[2], index=0), replace(examples[0], index=1)]
        assert store.num_tokens().tolist() == [ex.num_tokens for ex in examples]
