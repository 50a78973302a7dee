"""Formats: every format from every source type, auto-detection, validation errors, skip reports, HH, splits."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest

from dpokit.core.errors import ConfigError, DataError
from dpokit.data import SKIP_HINT, LoadResult, Skip, load_examples, ranked_to_pairs, split_examples
from dpokit.data.formats import EMPTY, IDENTICAL, PROMPTS_DISAGREE
from dpokit.data.records import Example
from dpokit.models.tiny import EOS, train_bpe_tokenizer

HH = Path("/work/shared/data/hh_harmless_test.jsonl.gz")
MARKER = "\n\nAssistant:"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    texts = ["hello there, how are you?", "fine thanks and you", "bye now, see you later", "the cat sat on the mat"]
    return train_bpe_tokenizer(texts * 4, vocab_size=300)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def turn(role: str, text: str, generation_prompt: bool = False) -> str:
    """The tiny chat template by hand: what the conversational format must produce."""
    return f"<|{role}|>\n{text}{EOS}\n" + ("<|assistant|>\n" if generation_prompt else "")


# Each format: two records and the (prompt, responses, label) they must become.
CASES: dict[str, tuple[list[dict], list[tuple[str, tuple[str, ...], bool | None]]]] = {
    "explicit": (
        [{"prompt": "Q1", "chosen": "good", "rejected": "bad"}, {"prompt": "", "chosen": "yes", "rejected": "no"}],
        [("Q1", ("good", "bad"), None), ("", ("yes", "no"), None)],
    ),
    "implicit": (
        [
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao",
             "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: go away"},
            {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"},
        ],
        [("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye" + MARKER, (" ciao", " go away"), None),
         ("\n\nHuman: 2+2?" + MARKER, (" 4", " 5"), None)],
    ),
    "ranked": (
        [{"prompt": "Q", "responses": ["a", "b", "c"]},
         {"prompt": "R", "responses": ["x", "y", "z"], "scores": [1, 3, 2.5]}],
        [("Q", ("a", "b", "c"), None), ("R", ("y", "z", "x"), None)],
    ),
    "unpaired": (
        [{"prompt": "Q", "completion": "good", "label": True}, {"prompt": "Q", "completion": "bad", "label": False}],
        [("Q", ("good",), True), ("Q", ("bad",), False)],
    ),
    "conversational": (
        [
            {"chosen": [user("hi"), bot("hello"), user("bye"), bot("ciao")],
             "rejected": [user("hi"), bot("hello"), user("bye"), bot("go away")]},
            {"prompt": [user("2+2?")], "chosen": [bot("4")], "rejected": [bot("5")]},
        ],
        [
            (turn("user", "hi") + turn("assistant", "hello") + turn("user", "bye", True),
             ("ciao" + EOS + "\n", "go away" + EOS + "\n"), None),
            (turn("user", "2+2?", True), ("4" + EOS + "\n", "5" + EOS + "\n"), None),
        ],
    ),
}


def write_source(tmp_path: Path, kind: str, records: list[dict]) -> tuple[str, list[int]]:
    """Writes `records` as a `kind` source; returns its path and the line each record is reported at."""
    if kind == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif kind == "json":
        path = tmp_path / "d.json"
        path.write_text(json.dumps(records), encoding="utf-8")
    elif kind == "parquet":
        path = tmp_path / "d.parquet"
        pd.DataFrame(records).to_parquet(path)
    elif kind == "csv":
        path = tmp_path / "d.csv"
        fields = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            rows = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in records]
            writer.writerows(rows)
        # An editor's line: the header is line 1, and a quoted cell with newlines spans several lines.
        heights = [1 + sum(str(v).count("\n") for v in row.values()) for row in rows]
        return str(path), [2 + sum(heights[:i]) for i in range(len(rows))]
    else:
        path = tmp_path / "hf"
        columns = list(dict.fromkeys(k for r in records for k in r))  # from_list takes columns from the first row
        datasets.Dataset.from_list([{k: r.get(k) for k in columns} for r in records]).save_to_disk(str(path))
    return str(path), [i + 1 for i in range(len(records))]


def write_jsonl(tmp_path: Path, records: list[Any]) -> str:
    """One line per item: dicts as JSON, strings verbatim (to write broken lines)."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "hf"])
@pytest.mark.parametrize("fmt", list(CASES))
def test_each_format_from_each_source(tmp_path: Path, fmt: str, kind: str, tokenizer: Any) -> None:
    records, expected = CASES[fmt]
    path, lines = write_source(tmp_path, kind, records)
    for requested in (fmt, "auto"):
        result = load_examples(path, format=requested, tokenizer=tokenizer)
        assert result.format == fmt
        assert result.skipped == []
        assert [(ex.prompt, ex.responses, ex.label) for ex in result.examples] == expected
        assert [ex.where for ex in result.examples] == [f"{path}:{line}" for line in lines]


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"prompt": "p", "chosen": "c", "rejected": "r"}, "explicit"),
        ({"chosen": "\n\nAssistant: c", "rejected": "\n\nAssistant: r"}, "implicit"),
        ({"chosen": [user("u"), bot("c")], "rejected": [user("u"), bot("r")]}, "conversational"),
        ({"prompt": [user("u")], "chosen": [bot("c")], "rejected": [bot("r")]}, "conversational"),
        ({"prompt": "p", "responses": ["a", "b"]}, "ranked"),
        ({"prompt": "p", "completion": "c", "label": False}, "unpaired"),
    ],
)
def test_auto_detects_the_format_from_keys(tmp_path: Path, record: dict, fmt: str, tokenizer: Any) -> None:
    assert load_examples(write_jsonl(tmp_path, [record]), tokenizer=tokenizer).format == fmt


def test_auto_detects_from_the_first_readable_record_then_holds_every_record_to_it(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [
        "{broken",
        {"text": "no known format"},
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"chosen": "\n\nAssistant: c", "rejected": "\n\nAssistant: r"},  # implicit shape after explicit ones
    ])
    result = load_examples(path, on_bad_record="skip")
    assert result.format == "explicit"
    assert len(result.examples) == 1
    assert [(s.line, s.field) for s in result.skipped] == [(1, None), (2, None), (4, "prompt")]
    assert result.skipped[1].reason.startswith("cannot detect the format from keys [text]")
    assert result.skipped[2].reason == "missing field"


GOOD = {
    "explicit": {"prompt": "p", "chosen": "c", "rejected": "r"},
    "implicit": {"chosen": "\n\nHuman: h\n\nAssistant: c", "rejected": "\n\nHuman: h\n\nAssistant: r"},
    "ranked": {"prompt": "p", "responses": ["a", "b"]},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
    "conversational": {"chosen": [user("u"), bot("c")], "rejected": [user("u"), bot("r")]},
}
NAN = float("nan")
AB = {"prompt": "p", "responses": ["a", "b"]}
UC = [user("u"), bot("c")]


@pytest.mark.parametrize(
    ("fmt", "record", "field", "reason"),
    [
        ("explicit", {"prompt": "p", "chosen": "c"}, "rejected", "missing field"),
        ("explicit", {"chosen": "c", "rejected": "r"}, "prompt", "missing field"),
        ("explicit", {"prompt": None, "chosen": "c", "rejected": "r"}, "prompt", "expected a string, got null"),
        ("explicit", {"prompt": "p", "chosen": 3, "rejected": "r"}, "chosen", "expected a string, got number"),
        ("explicit", {"prompt": "p", "chosen": "c", "rejected": None}, "rejected", "expected a string, got null"),
        ("explicit", {"prompt": "p", "chosen": " \n\t", "rejected": "r"}, "chosen", EMPTY),
        ("explicit", {"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", IDENTICAL),
        ("implicit", {"chosen": "no marker", "rejected": "\n\nAssistant: r"}, "chosen",
         "prompt marker '\\n\\nAssistant:' not found"),
        ("implicit", {"chosen": "\n\nHuman: a\n\nAssistant: c", "rejected": "\n\nHuman: b\n\nAssistant: r"},
         "rejected", PROMPTS_DISAGREE),
        ("implicit", {"chosen": "\n\nHuman: a\n\nAssistant: c", "rejected": "\n\nHuman: a\n\nAssistant: c"},
         "rejected", IDENTICAL),
        ("implicit", {"chosen": "\n\nHuman: a\n\nAssistant: c", "rejected": "\n\nHuman: a\n\nAssistant:  "},
         "rejected", EMPTY),
        ("ranked", {"prompt": "p", "responses": ["only"]}, "responses",
         "a ranked list needs at least 2 responses, got 1"),
        ("ranked", {"prompt": "p", "responses": "a, b"}, "responses", "expected a list of strings, got string"),
        ("ranked", {"prompt": "p", "responses": ["a", "", "b"]}, "responses[1]", EMPTY),
        ("ranked", {"prompt": "p", "responses": ["a", "b", "a"]}, "responses[2]",
         "duplicate response (same as responses[0])"),
        ("ranked", {**AB, "scores": [1, 2, 3]}, "scores", "scores has 3 entries but responses has 2"),
        ("ranked", {**AB, "scores": [1, "2"]}, "scores[1]", "expected a number, got string"),
        ("ranked", {**AB, "scores": [True, 0]}, "scores[0]", "expected a number, got boolean"),
        ("ranked", {**AB, "scores": [NAN, 0]}, "scores[0]", "expected a finite number, got nan"),
        ("unpaired", {"prompt": "p", "completion": "c", "label": "yes"}, "label", "expected true or false, got string"),
        ("unpaired", {"prompt": "p", "label": True}, "completion", "missing field"),
        ("conversational", {"chosen": [user("u"), bot("c")], "rejected": "r"}, "rejected",
         "expected a non-empty list of {role, content} messages, got string"),
        ("conversational", {"chosen": [user("u")], "rejected": UC}, "chosen", "no assistant message"),
        ("conversational", {"chosen": [bot("c")], "rejected": [bot("r")]}, "chosen",
         "no prompt messages before the last assistant message"),
        ("conversational", {"chosen": [{"role": "user"}, bot("c")], "rejected": [user("u"), bot("r")]}, "chosen[0]",
         "message 'content' must be a string, got null"),
        ("conversational", {"chosen": [user("u"), bot("c")], "rejected": [user("v"), bot("r")]}, "rejected",
         PROMPTS_DISAGREE),
        ("conversational", {"chosen": [user("u"), bot(" ")], "rejected": [user("u"), bot("r")]}, "chosen", EMPTY),
        ("conversational", {"chosen": UC, "rejected": UC}, "rejected", IDENTICAL),
    ],
)
def test_bad_record_error_names_file_line_and_field(
    tmp_path: Path, fmt: str, record: dict, field: str, reason: str, tokenizer: Any
) -> None:
    path = write_jsonl(tmp_path, [GOOD[fmt], record])
    with pytest.raises(DataError) as err:
        load_examples(path, format=fmt, tokenizer=tokenizer)
    assert (err.value.source, err.value.line, err.value.field, err.value.reason) == (path, 2, field, reason)
    assert str(err.value) == f"{path}:2: field '{field}': {reason}; {SKIP_HINT}"


def test_broken_source_lines_are_bad_records_without_a_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD["explicit"]).encode() + b'\n{"prompt": "\xff"}\n')
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    assert str(err.value) == f"{path}:2: invalid UTF-8 (byte 13 of the line); {SKIP_HINT}"
    assert err.value.field is None


def test_skip_counts_and_report(tmp_path: Path) -> None:
    good, same = GOOD["explicit"], {"prompt": "p", "chosen": "x", "rejected": "x"}
    path = write_jsonl(tmp_path, [good, same, good, "[1]", same, {**good, "chosen": ""}, "{oops"])
    result = load_examples(path, on_bad_record="skip")
    assert len(result.examples) == 2
    assert result.skipped[:2] == [
        Skip(path, 2, "rejected", IDENTICAL),
        Skip(path, 4, None, "expected a JSON object, got array"),
    ]
    assert result.report() == (
        f"loaded 2 examples (explicit) from {path}; skipped 5: "
        f"2 × {IDENTICAL} (first: {path}:2), "
        f"1 × expected a JSON object, got array (first: {path}:4), "
        f"1 × {EMPTY} (first: {path}:6), "
        f"1 × invalid JSON: Expecting property name enclosed in double quotes (column 2) (first: {path}:7)"
    )
    clean = LoadResult(examples=result.examples[:1], format="explicit", source=path)
    assert clean.report() == f"loaded 1 example (explicit) from {path}; skipped 0"


def test_no_usable_examples_is_a_data_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": "p", "chosen": "x", "rejected": "x"}, "{"])
    with pytest.raises(DataError) as err:
        load_examples(path, on_bad_record="skip")
    assert err.value.source == path
    assert str(err.value).startswith(f"{path}: no usable examples: 2 skipped (1 × {IDENTICAL} (first: {path}:1)")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no usable examples: the source has no records"):
        load_examples(str(empty))


def test_limit_stops_reading_before_later_bad_records(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [GOOD["explicit"], "{broken", GOOD["explicit"], GOOD["explicit"], "{broken"])
    result = load_examples(path, on_bad_record="skip", limit=2)
    assert [ex.line for ex in result.examples] == [1, 3]
    assert [s.line for s in result.skipped] == [2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "pairs"}, "unknown data format 'pairs'; expected one of auto, explicit, implicit, conversational, "
                              "ranked, unpaired"),
        ({"on_bad_record": "ignore"}, "unknown on_bad_record 'ignore'; expected one of error, skip"),
        ({"limit": 0}, "limit must be a positive integer or None, got 0"),
        ({"prompt_marker": ""}, "prompt_marker must not be empty"),
        ({"format": "conversational"}, "the conversational format needs a tokenizer"),
    ],
)
def test_bad_options_are_config_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_examples(write_jsonl(tmp_path, [GOOD["explicit"]]), **kwargs)


def test_custom_prompt_marker(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"chosen": "USER: hi\nBOT: yo", "rejected": "USER: hi\nBOT: no"}])
    (ex,) = load_examples(path, format="implicit", prompt_marker="\nBOT:").examples
    assert (ex.prompt, ex.responses) == ("USER: hi\nBOT:", (" yo", " no"))


# --- Anthropic HH (shared file) ------------------------------------------------------------------------------------


def test_hh_harmless_implicit_split() -> None:
    result = load_examples(str(HH), on_bad_record="skip")
    assert result.format == "implicit"
    assert len(result.examples) == 2303
    assert [(s.line, s.field, s.reason) for s in result.skipped] == [
        *[(line, "chosen", EMPTY) for line in (87, 517, 926, 1104)],
        *[(line, "rejected", PROMPTS_DISAGREE) for line in (1255, 1689, 1951, 1953, 2037)],
    ]
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        raw = [json.loads(line) for line in f]
    assert len(raw) == 2312
    for ex in result.examples:
        assert ex.prompt.endswith(MARKER)
        assert MARKER not in ex.chosen and MARKER not in ex.rejected
        assert ex.prompt + ex.chosen == raw[ex.line - 1]["chosen"]
        assert ex.prompt + ex.rejected == raw[ex.line - 1]["rejected"]


# --- conversational rendering --------------------------------------------------------------------------------------


def test_hh_harmless_stops_at_its_first_empty_response_and_says_how_to_go_on() -> None:
    with pytest.raises(DataError) as err:
        load_examples(str(HH))
    assert str(err.value) == f"{HH}:87: field 'chosen': {EMPTY}; {SKIP_HINT}"
    assert "data.on_bad_record=skip" in SKIP_HINT


def test_conversational_needs_a_tokenizer_with_a_chat_template(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path, [GOOD["conversational"]])
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        load_examples(path)  # auto-detected, then refused: not a per-record skip
    no_template = train_bpe_tokenizer(["a b c"], vocab_size=270)
    no_template.chat_template = None
    with pytest.raises(ConfigError, match="with a chat template"):
        load_examples(path, format="conversational", tokenizer=no_template)


class PromptChangingTemplate:
    """A template that renders the last user turn differently once an answer follows (as some 'thinking' ones do)."""

    chat_template = "fake"
    all_special_ids: list[int] = []  # it writes no end-of-turn token

    def __call__(self, text: str, add_special_tokens: bool) -> dict:
        return {"input_ids": [ord(c) for c in text]}

    def apply_chat_template(self, messages: list[dict], tokenize: bool, add_generation_prompt: bool) -> str:
        text = "".join(f"[{m['role']}:{m['content']}]" for m in messages)
        return text + "[assistant:" if add_generation_prompt else "<s>" + text


def test_conversational_prompt_that_does_not_prefix_the_full_rendering_is_a_bad_record(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [GOOD["conversational"]])
    with pytest.raises(DataError, match="renders the prompt differently") as err:
        load_examples(path, tokenizer=PromptChangingTemplate())
    assert (err.value.line, err.value.field) == (1, "chosen")


# --- ranked --------------------------------------------------------------------------------------------------------


def test_scores_sort_descending_and_ties_keep_their_order(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [1, 3, 2, 3.0]}])
    assert load_examples(path).examples[0].responses == ("b", "d", "c", "a")


def test_ranked_to_pairs_gives_all_better_worse_pairs_in_order() -> None:
    ex = Example(prompt="p", responses=("a", "b", "c", "d"), source="f.jsonl", line=7)
    pairs = ranked_to_pairs(ex)
    assert len(pairs) == 6
    assert [p.responses for p in pairs] == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    assert {(p.prompt, p.where) for p in pairs} == {("p", "f.jsonl:7")}
    assert ranked_to_pairs(Example(prompt="p", responses=("a", "b"))) == [Example(prompt="p", responses=("a", "b"))]


# --- split ---------------------------------------------------------------------------------------------------------


def _examples(n: int) -> list[Example]:
    return [Example(prompt=f"p{i}", responses=("c", "r"), source="s", line=i + 1) for i in range(n)]


def test_split_is_deterministic_disjoint_covering_and_in_file_order() -> None:
    examples = _examples(20)
    train, eval_ = split_examples(examples, eval_fraction=0.25, seed=0)
    assert len(eval_) == 5 and len(train) == 15
    assert sorted(ex.line for ex in train + eval_) == list(range(1, 21))  # disjoint and covering
    assert [ex.line for ex in train] == sorted(ex.line for ex in train)
    assert [ex.line for ex in eval_] == sorted(ex.line for ex in eval_)
    assert split_examples(examples, 0.25, seed=0) == (train, eval_)
    assert [ex.line for ex in eval_] == [1, 11, 15, 17, 19]  # pinned: a change here changes every run's eval set
    assert split_examples(examples, 0.25, seed=1).eval != eval_


@pytest.mark.parametrize(
    ("n", "fraction", "n_eval"),
    [(20, 0.0, 0), (3, 0.01, 1), (1, 0.5, 0), (2, 0.9, 1), (0, 0.5, 0), (10, 0.34, 3)],
)
def test_split_sizes(n: int, fraction: float, n_eval: int) -> None:
    split = split_examples(_examples(n), fraction, seed=3)
    assert (len(split.train), len(split.eval)) == (n - n_eval, n_eval)


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_split_rejects_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ConfigError, match="eval_fraction must be in"):
        split_examples(_examples(4), fraction, seed=0)
