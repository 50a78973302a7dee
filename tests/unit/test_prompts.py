"""Prompt files: text lines, or records whose prompt is a string or a list of messages; errors name file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.core.errors import DataError
from dpokit.data.prompts import read_prompts

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_text_lines_and_records_with_strings_or_messages(tmp_path: Path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  \nsecond prompt \n")
    assert read_prompts(str(txt)) == ["first prompt", "second prompt "]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ({"prompt": "a"}, {"prompt": CHAT, "id": 3})) + "\n")
    assert read_prompts(str(jsonl)) == ["a", CHAT]


@pytest.mark.parametrize(("record", "field", "reason"), [
    ({"prompt": ""}, "prompt", "expected a non-empty string or a list of {role, content} messages"),
    ({"text": "a"}, "prompt", "expected a non-empty string or a list of {role, content} messages"),
    ({"prompt": [{"role": "user"}]}, "prompt[0]", "message 'content' must be a string, got null"),
    ({"prompt": []}, "prompt", "expected a non-empty list of {role, content} messages, got an empty list"),
])
def test_a_bad_prompt_names_file_line_and_field(tmp_path: Path, record, field, reason):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as err:
        read_prompts(str(path))
    assert str(err.value) == f"{path}:2: field '{field}': {reason}"


def test_missing_file_and_broken_json(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        read_prompts(str(tmp_path / "missing.txt"))
    broken = tmp_path / "b.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=rf"^{broken}:2: invalid JSON"):
        read_prompts(str(broken))
    empty = tmp_path / "e.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no prompts"):
        read_prompts(str(empty))
