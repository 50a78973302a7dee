"""Sources: each file type yields RawRecords with the right line numbers; bad lines become records, not crashes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from dpokit.core.errors import DataError
from dpokit.data.sources import RawRecord, read_records

PAIR = {"prompt": "p", "chosen": "c", "rejected": "r"}


@pytest.fixture(autouse=True)
def _datasets_cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`load_dataset` on a local directory still writes a cache; keep it out of the home directory."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def _lines(records: list[RawRecord]) -> list[tuple[int, bool]]:
    """(line, readable) per record."""
    return [(r.line, r.error is None) for r in records]


def test_raw_record_needs_exactly_one_of_record_and_error() -> None:
    with pytest.raises(ValueError):
        RawRecord("x", 1)
    with pytest.raises(ValueError):
        RawRecord("x", 1, record={}, error="bad")


# --- JSONL ---------------------------------------------------------------------------------------------------------


def test_jsonl_lines_are_one_based_and_whitespace_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\n\n   \t\n{"a": 2}\r\n{"a": 3}')  # no final newline, a CRLF line
    records = list(read_records(str(path)))
    assert [(r.line, r.record) for r in records] == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]
    assert all(r.source == str(path) for r in records)


def test_jsonl_bad_lines_become_error_records_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps(PAIR).encode(),
        b'{"prompt": "p", "chosen": ',  # truncated
        b"[1, 2]",  # JSON but not an object
        b'{"prompt": "caf\xe9"}',  # latin-1 byte, not UTF-8
        b"\x00",  # not whitespace: not silently skipped
        b'"just a string"',
        json.dumps(PAIR).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    records = list(read_records(str(path)))
    assert _lines(records) == [(1, True), (2, False), (3, False), (4, False), (5, False), (6, False), (7, True)]
    errors = {r.line: r.error for r in records if r.error}
    assert errors[2].startswith("invalid JSON")
    assert errors[3] == "expected a JSON object, got array"
    assert errors[4] == "invalid UTF-8 (byte 16 of the line)"
    assert errors[5].startswith("invalid JSON")
    assert errors[6] == "expected a JSON object, got string"


def test_jsonl_gz_and_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + json.dumps(PAIR).encode() + b"\n" + json.dumps({"x": "é"}).encode() + b"\n")
    records = list(read_records(str(path)))
    assert [(r.line, r.record) for r in records] == [(1, PAIR), (2, {"x": "é"})]


def test_truncated_gzip_yields_what_it_can_then_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    whole = gzip.compress(b"".join(json.dumps({"i": i, "pad": "x" * 50}).encode() + b"\n" for i in range(2000)))
    path.write_bytes(whole[: len(whole) // 2])
    records = read_records(str(path))
    assert next(records).record["i"] == 0  # lazy: the first record comes before the damage is reached
    with pytest.raises(DataError) as err:
        list(records)
    assert err.value.source == str(path)
    assert "cannot read file" in str(err.value)


# --- JSON ----------------------------------------------------------------------------------------------------------


def test_json_list_items_are_numbered_from_one(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([PAIR, 7, {"b": 2}]), encoding="utf-8")
    records = list(read_records(str(path)))
    assert [(r.line, r.record, r.error) for r in records] == [
        (1, PAIR, None),
        (2, None, "expected a JSON object, got number"),
        (3, {"b": 2}, None),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'[{"a": 1}, {"a": ', "invalid JSON"),
        (b'{"train": []}', "expected a top-level JSON array of objects, got object (keys: train)"),
        (b'[{"a": "\xff"}]', "invalid JSON"),
    ],
)
def test_json_whole_file_failure_raises_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_records(str(path))
    assert err.value.source == str(path)
    assert err.value.line is None
    assert message in str(err.value)


# --- Parquet -------------------------------------------------------------------------------------------------------


def test_parquet_rows_keep_lists_and_nulls(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    rows = [
        {"prompt": "p1", "responses": ["a", "b"], "scores": [1.0, 2.0]},
        {"prompt": None, "responses": ["c"], "scores": [0.5]},
    ]
    pd.DataFrame(rows).to_parquet(path)
    records = list(read_records(str(path)))
    assert [(r.line, r.record) for r in records] == [(1, rows[0]), (2, rows[1])]


def test_corrupt_parquet_raises_data_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet file") as err:
        list(read_records(str(path)))
    assert err.value.source == str(path)


# --- CSV -----------------------------------------------------------------------------------------------------------


def test_csv_line_is_the_editor_line_even_with_multiline_cells(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\np1,c1,r1\n"two\nlines",c2,r2\n\np3,c3,r3\n', encoding="utf-8")
    records = list(read_records(str(path)))
    assert [(r.line, r.record["prompt"]) for r in records] == [(2, "p1"), (3, "two\nlines"), (6, "p3")]


def test_csv_decodes_lists_messages_and_labels_but_not_prose(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    frame = pd.DataFrame(
        [
            {"prompt": "[1] see above", "responses": '["a", "b"]', "scores": "[2, 1.5]", "label": "True",
             "chosen": json.dumps(messages)},
            {"prompt": "[1, 2]", "responses": "[broken", "scores": "", "label": "maybe", "chosen": "[INST] hi"},
        ]
    )
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    first, second = (r.record for r in read_records(str(path)))
    assert first == {"prompt": "[1] see above", "responses": ["a", "b"], "scores": [2, 1.5], "label": True,
                     "chosen": messages}
    # Not a message list, not valid JSON, not a boolean: left as text for the format to report.
    assert second == {"prompt": "[1, 2]", "responses": "[broken", "scores": "", "label": "maybe", "chosen": "[INST] hi"}


def test_csv_bad_rows_become_error_records(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"prompt,chosen,rejected\np,c,r\np,c,r,extra\np,caf\xe9,r\np,c\n")
    records = list(read_records(str(path)))
    assert [(r.line, r.record, r.error) for r in records] == [
        (2, PAIR, None),
        (3, None, "row has 4 cells but the header has 3"),
        (4, None, "invalid UTF-8"),
        (5, {"prompt": "p", "chosen": "c"}, None),  # a short row lacks its last field; the format says which
    ]


# --- datasets ------------------------------------------------------------------------------------------------------


def test_saved_dataset_directory(tmp_path: Path) -> None:
    datasets.Dataset.from_list([PAIR, {**PAIR, "prompt": "q"}]).save_to_disk(str(tmp_path / "ds"))
    records = list(read_records(str(tmp_path / "ds")))
    assert [(r.line, r.record["prompt"]) for r in records] == [(1, "p"), (2, "q")]


def test_saved_dataset_dict_picks_the_split(tmp_path: Path) -> None:
    splits = {"train": [PAIR], "test": [{**PAIR, "prompt": "t"}]}
    splits = {name: datasets.Dataset.from_list(rows) for name, rows in splits.items()}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    assert [r.record["prompt"] for r in read_records(str(tmp_path / "dd"), split="test")] == ["t"]
    with pytest.raises(DataError, match="no split 'validation'; the dataset has train, test"):
        read_records(str(tmp_path / "dd"), split="validation")


def test_plain_data_directory_goes_through_load_dataset(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.jsonl").write_text(json.dumps(PAIR) + "\n" + json.dumps(PAIR) + "\n")
    records = list(read_records(str(tmp_path / "raw")))
    assert [(r.line, r.record) for r in records] == [(1, PAIR), (2, PAIR)]


def test_hub_names_go_to_load_dataset_and_failures_become_data_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, split: str) -> list[dict]:
        calls.append((name, split))
        if name == "org/missing":
            raise FileNotFoundError("Dataset 'org/missing' doesn't exist on the Hub")
        return [PAIR]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert [r.record for r in read_records("org/prefs", split="test")] == [PAIR]
    with pytest.raises(DataError, match="load_dataset.*FileNotFoundError: Dataset 'org/missing'") as err:
        read_records("org/missing")
    assert err.value.source == "org/missing"
    assert calls == [("org/prefs", "test"), ("org/missing", "train")]


# --- missing and unsupported ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope.jsonl", "nope.jsonl.gz", "nope.json", "nope.parquet", "nope.CSV"])
def test_missing_file_raises_naming_it(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / name)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert err.value.source == path
    assert str(err.value) == f"{path}: no such file"


@pytest.mark.parametrize("path", ["./missing_dir", "data/sub/missing", "notes.txt", "/abs/missing"])
def test_missing_local_path_is_not_sent_to_the_hub(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("sent to the hub"))
    with pytest.raises(DataError, match="no such file or directory"):
        read_records(path)


def test_unsupported_extension_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("prompt\tchosen\n")
    with pytest.raises(DataError, match=r"unsupported file type; expected one of \.jsonl\.gz, \.jsonl"):
        read_records(str(path))
