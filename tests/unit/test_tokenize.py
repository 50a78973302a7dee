"""Tokenization convention ids(prompt) + ids(response) + [eos], the BPE boundary, and truncation."""

from __future__ import annotations

import pytest

from dpokit.core.errors import DataError
from dpokit.data.records import Example
from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
from dpokit.models.tiny import train_bpe_tokenizer


@pytest.fixture(scope="module")
def bpe():
    text = ["hello world, the answer is hello. hello there, hello again"] * 50
    return train_bpe_tokenizer(text, vocab_size=300)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_boundary_merge_is_avoided_by_tokenizing_apart(bpe):
    """'hel' + 'lo' joined would be the single word 'hello'; the prompt's tokens must not change."""
    prompt, response = "the answer is hel", "lo world"
    assert ids(bpe, prompt + response) != ids(bpe, prompt) + ids(bpe, response)  # the merge really happens
    ex = tokenize_examples([Example(prompt, (response, "p"))], bpe, TokenizeSettings()).examples[0]
    assert list(ex.prompt_ids) == ids(bpe, prompt)
    assert list(ex.response_ids[0]) == ids(bpe, response) + [bpe.eos_token_id]
    assert bpe.decode(list(ex.prompt_ids) + list(ex.response_ids[0][:-1])) == prompt + response


def test_trailing_prompt_space_moves_into_response(bpe):
    ex = tokenize_examples([Example("the answer is ", ("hello", "world"))], bpe, TokenizeSettings()).examples[0]
    assert list(ex.prompt_ids) == ids(bpe, "the answer is")
    assert list(ex.response_ids[0]) == ids(bpe, " hello") + [bpe.eos_token_id]


def test_prompt_ids_shared_by_all_responses(bpe):
    ex = tokenize_examples([Example("hello", (" a", " b", " c"))], bpe, TokenizeSettings()).examples[0]
    assert len(ex.response_ids) == 3
    assert all(r[-1] == bpe.eos_token_id for r in ex.response_ids)


def test_prompt_truncation_keeps_end_or_start(bpe):
    prompt = " ".join(f"w{i}" for i in range(40))
    full = ids(bpe, prompt)
    for side, expected in (("keep_end", full[-10:]), ("keep_start", full[:10])):
        s = TokenizeSettings(max_length=16, max_prompt_length=10, prompt_truncation=side)
        res = tokenize_examples([Example(prompt, (" hello", " world"))], bpe, s)
        assert list(res.examples[0].prompt_ids) == expected
        assert res.prompts_truncated == 1 and res.responses_truncated == 0


def test_response_truncated_to_room_left(bpe):
    resp = " hello" * 30
    s = TokenizeSettings(max_length=12, max_prompt_length=4)
    res = tokenize_examples([Example("the answer is", (resp, " world"))], bpe, s)
    ex = res.examples[0]
    assert len(ex.prompt_ids) + len(ex.response_ids[0]) == 12
    assert ex.response_ids[0][-1] != bpe.eos_token_id  # cut responses lose their eos
    assert ex.response_ids[1][-1] == bpe.eos_token_id
    assert res.responses_truncated == 1


def test_prompt_leaving_no_room_is_a_bad_record(bpe):
    long_prompt = "hello " * 40
    s = TokenizeSettings(max_length=8, prompt_truncation="none")
    ex = Example(long_prompt, (" a", " b"), source="f.jsonl", line=3)
    with pytest.raises(DataError) as err:
        tokenize_examples([ex], bpe, s)
    assert (err.value.source, err.value.line, err.value.field) == ("f.jsonl", 3, "prompt")
    lenient = TokenizeSettings(8, None, "none", on_bad_record="skip")
    skipped = tokenize_examples([ex, Example("hi", (" a", " b"))], bpe, lenient)
    assert len(skipped.examples) == 1 and len(skipped.skipped) == 1
    assert skipped.examples[0].index == 1  # the dataset index survives the skip
    assert skipped.skipped[0].reason == "prompt leaves no room for a response under max_length=8"  # groupable


def test_empty_prompt_gets_a_start_token_so_every_response_token_is_scored(bpe):
    ex = tokenize_examples([Example("", ("hello", "world"))], bpe, TokenizeSettings()).examples[0]
    assert list(ex.prompt_ids) == [bpe.eos_token_id]
    assert list(ex.response_ids[0]) == ids(bpe, "hello") + [bpe.eos_token_id]


def test_a_response_that_already_ends_its_turn_gets_no_second_eos(bpe):
    """Pre-rendered chat text (e.g. a sampled reply rendered by its template) keeps exactly one end of turn."""
    eos = bpe.eos_token
    ex = tokenize_examples([Example("hello", (f" world{eos}\n", " there"))], bpe, TokenizeSettings()).examples[0]
    assert list(ex.response_ids[0]) == ids(bpe, f" world{eos}\n")
    assert list(ex.response_ids[0]).count(bpe.eos_token_id) == 1
    assert list(ex.response_ids[1]) == ids(bpe, " there") + [bpe.eos_token_id]
