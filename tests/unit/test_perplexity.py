"""Held-out perplexity (eval.perplexity): the NLL equals plain transformers losses, windows score every token once,
and every reader problem names file, line and field."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from dpokit.core.errors import ConfigError, DataError
from dpokit.data.chat import render
from dpokit.data.tokenize import encode_documents
from dpokit.eval.perplexity import Document, perplexity, read_held_out, windows
from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "the cat sat on the mat.",
    "a much longer document about cats, mats and dogs, which goes on for a while so that it needs several windows "
    "of the short length used here, and then some more words to make its length odd.",
    "hi",
    "dogs bark; cats purr. birds sing in the morning and sleep at night, mostly.",
]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(TEXTS * 20, vocab_size=300)


@pytest.fixture(scope="module")
def model(bpe):
    return tiny_llama(bpe, hidden_size=32, num_layers=2, num_heads=2, seed=3)


def plain_nll(model, ids: list[int], max_length: int) -> tuple[float, int]:
    """Independent of dpokit's batching: unpadded windows of `max_length` tokens starting every max_length - 1
    tokens (as documented), each window's mean loss from transformers times its scored tokens."""
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, max_length - 1):
        window = torch.tensor([ids[start:start + max_length]])
        with torch.no_grad():
            loss = model(input_ids=window, labels=window).loss.item()
        total += loss * (window.shape[1] - 1)
        count += window.shape[1] - 1
    return total, count


def training_ids(tokenizer, text: str) -> list[int]:
    """What training makes of a response to an empty prompt: [eos] + ids(text) + [eos] (no bos in this tokenizer)."""
    eos = tokenizer.eos_token_id
    return [eos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos]


@pytest.mark.parametrize("max_length", [4096, 37, 2])
def test_nll_equals_transformers_loss_token_weighted(model, bpe, max_length):
    ids = [training_ids(bpe, t) for t in TEXTS]
    assert len({len(i) for i in ids}) == len(ids) and any(len(i) % 2 for i in ids)  # odd, unequal lengths
    sums = [plain_nll(model, i, max_length) for i in ids]
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    result = perplexity(model, bpe, TEXTS, max_length=max_length, batch_size=3)  # padding in every batch
    assert result.tokens == sum(len(i) - 1 for i in ids) == sum(n for _, n in sums)
    assert result.nll == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.documents == len(TEXTS)
    assert result.windowed == sum(len(i) > max_length for i in ids)
    assert (result.windowed > 0) == (max_length < 4096)


def test_batch_size_and_padding_do_not_change_the_result(model, bpe):
    one = perplexity(model, bpe, TEXTS, max_length=40, batch_size=1)
    many = perplexity(model, bpe, TEXTS, max_length=40, batch_size=8)
    assert many.nll == pytest.approx(one.nll, rel=1e-6) and many.tokens == one.tokens


def test_windows_score_every_token_once():
    ids = list(range(100, 123))  # 23 tokens: 22 to score
    for max_length in (2, 3, 5, 22, 23, 24):
        parts = windows(ids, max_length)
        assert all(2 <= len(w) <= max_length for w in parts)
        scored = [t for w in parts for t in w[1:]]
        assert scored == ids[1:]
        assert all(a[-1] == b[0] for a, b in zip(parts, parts[1:], strict=False))  # one token of overlap


def test_eval_mode_is_used_and_restored(model, bpe):
    model.train()
    try:
        assert perplexity(model, bpe, TEXTS[:2]).tokens > 0
        assert model.training
    finally:
        model.eval()


def test_a_bos_tokenizer_starts_each_document_with_bos_once():
    tok = train_bpe_tokenizer(TEXTS * 5, vocab_size=300)
    tok.add_special_tokens({"bos_token": "<|bos|>"})
    tok._tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A",
                                                       special_tokens=[("<|bos|>", tok.bos_token_id)])
    body = tok("hi", add_special_tokens=False)["input_ids"]
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert encode_documents(tok, ["hi", "<|bos|>hi"]) == [[bos, *body, eos]] * 2
    assert perplexity(tiny_llama(tok, hidden_size=16, num_layers=1, num_heads=2), tok, ["hi"]).tokens == len(body) + 1


def test_messages_are_rendered_with_the_chat_template(model, bpe, tmp_path):
    dialogue = [{"role": "user", "content": "the cat sat?"}, {"role": "assistant", "content": "on the mat."}]
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": dialogue}) + "\n")
    docs = read_held_out(str(path), field="messages").documents
    assert docs == [Document(dialogue, str(path), 1, "messages")]
    text = render(bpe, dialogue, add_generation_prompt=False)
    assert text.endswith(bpe.eos_token + "\n")  # the template closes every turn itself
    ids = [bpe.eos_token_id, *bpe(text, add_special_tokens=False)["input_ids"]]  # so no eos is appended
    assert encode_documents(bpe, [text]) == [ids]
    result = perplexity(model, bpe, docs, max_length=4096)
    total, count = plain_nll(model, ids, 4096)
    assert result.tokens == count and result.nll == pytest.approx(total / count, rel=1e-5)


def test_messages_without_a_chat_template_name_the_record(model, bpe, tmp_path):
    plain = train_bpe_tokenizer(TEXTS, vocab_size=300)
    plain.chat_template = None
    doc = Document([{"role": "user", "content": "hi"}], "chats.jsonl", 7, "messages")
    with pytest.raises(DataError, match=r"^chats.jsonl:7: field 'messages': a list of messages needs a chat template"):
        perplexity(model, plain, [doc])


def test_txt_has_one_document_per_non_blank_line_and_a_limit(tmp_path):
    path = tmp_path / "held.txt"
    path.write_text("first line\n\n  \nsecond line\r\nthird\n")
    docs = read_held_out(str(path)).documents
    assert [(d.content, d.line, d.field) for d in docs] == [("first line", 1, None), ("second line", 4, None),
                                                            ("third", 5, None)]
    assert [d.content for d in read_held_out(str(path), limit=2).documents] == ["first line", "second line"]


def test_txt_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nbroken \xff byte\n")
    with pytest.raises(DataError, match=r"bad.txt:2: invalid UTF-8"):
        read_held_out(str(path))
    with pytest.raises(DataError, match=r"missing.txt: no such file"):
        read_held_out(str(tmp_path / "missing.txt"))
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"blank.txt: no documents"):
        read_held_out(str(tmp_path / "blank.txt"))


def test_records_read_the_field_and_stop_at_the_limit(tmp_path):
    path = tmp_path / "held.jsonl"
    path.write_text('{"text": "one", "body": "uno"}\n\n{"text": "two", "body": "dos"}\n{broken\n')
    assert [d.content for d in read_held_out(str(path), limit=2).documents] == ["one", "two"]  # line 4 never read
    docs = read_held_out(str(path), field="body", limit=1).documents
    assert [(d.content, d.line, d.field) for d in docs] == [("uno", 1, "body")]
    csv = tmp_path / "held.csv"
    csv.write_text("id,text\n1,hello there\n2,general kenobi\n")
    assert [(d.content, d.line) for d in read_held_out(str(csv)).documents] == [("hello there", 2),
                                                                               ("general kenobi", 3)]


@pytest.mark.parametrize(("line", "match"), [
    ('{"body": "x"}', r"held.jsonl:2: field 'text': missing field; the record's fields are: body"),
    ('{"text": 3}', r"held.jsonl:2: field 'text': expected a string or a list of \{role, content\} messages, got "
                    "number"),
    ('{"text": "  "}', r"held.jsonl:2: field 'text': empty or whitespace-only text"),
    ('{"text": "\\ud800"}', r"held.jsonl:2: field 'text': invalid Unicode"),
    ('{"text": [{"role": "user", "content": "hi"}, {"role": 1, "content": "x"}]}',
     r"held.jsonl:2: field 'text\[1\]': message 'role' must be a string"),
    ("[1, 2]", r"held.jsonl:2: expected a JSON object, got array"),
])
def test_record_errors_name_file_line_and_field(tmp_path, line, match):
    path = tmp_path / "held.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=match):
        read_held_out(str(path))


def test_bad_settings_are_refused(model, bpe, tmp_path):
    with pytest.raises(ConfigError, match="limit must be a positive integer"):
        read_held_out(str(tmp_path / "x.txt"), limit=0)
    with pytest.raises(ConfigError, match="max_length must be an integer >= 2"):
        perplexity(model, bpe, TEXTS, max_length=1)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        perplexity(model, bpe, TEXTS, batch_size=0)
    with pytest.raises(ConfigError, match="no texts"):
        perplexity(model, bpe, [])


def test_the_real_hh_file_reads_with_field_chosen(hh_path, model, bpe):
    held_out = read_held_out(str(hh_path), field="chosen", limit=3)
    with gzip.open(hh_path, "rt", encoding="utf-8") as f:
        expected = [json.loads(next(f))["chosen"] for _ in range(3)]
    assert [d.content for d in held_out.documents] == expected and expected[0].startswith("\n\nHuman:")
    assert [d.line for d in held_out.documents] == [1, 2, 3] and held_out.field == "chosen"
    result = perplexity(model, bpe, held_out.documents, max_length=64, batch_size=2)
    assert result.documents == 3 and result.windowed >= 1
    assert result.tokens == sum(len(training_ids(bpe, t)) - 1 for t in expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(model, bpe):
    cpu = perplexity(model, bpe, TEXTS, max_length=37, batch_size=3)
    on_gpu = perplexity(model.to("cuda"), bpe, TEXTS, max_length=37, batch_size=3)
    model.to("cpu")
    assert on_gpu.tokens == cpu.tokens and on_gpu.nll == pytest.approx(cpu.nll, rel=1e-4)
