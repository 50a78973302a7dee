"""Fuzzing the data loaders: whatever the bytes, `load_examples` returns examples plus counted skips, or raises a
`DpokitError` naming the file (and the line and field where one is at fault); never anything else.

Every generated line carries what the loader must make of it (an example with known content, or a skip blaming a
known field), so the properties check the loader against a spec, not against itself:

    lines --write--> file --load_examples--> examples + skips   ==   expected(lines)   (skip mode)
                                         \\-> DataError at the first bad line, naming its field  (error mode)

The catalog test at the end pins one named case per kind of damage; the property tests mix them, many to a file,
in every format and in JSONL (plain and gzip), JSON, CSV and Parquet.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dpokit.core.errors import DataError
from dpokit.data import load_examples
from dpokit.data.formats import DEFAULT_PROMPT_MARKER as MARKER
from dpokit.models.tiny import EOS, train_bpe_tokenizer

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HUGE = "x" * 2**20 + "\u00e9"  # a 1 MiB field
EDGE_TEXTS = [
    "", " ", "\u200b", "\u200d", "\u200f", "\u202e", "\u05e9\u05dc\u05d5\u05dd", "\u0645\u0631\u062d\u0628\u0627",
    "e\u0301", "\u0301", "\x00", "a\x00b", "\ufeff", "\u2028", "\U0010ffff", "\ufffd", "\U0001f642",
    "\U0001f469\U0001f3fd\u200d\U0001f680", '"a, b"\n', "\\u0000", "\r", "<huge>",
]
BLANKS = ["", " ", "\n\t", "\u3000", "\xa0 "]  # str.strip() empties every one
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]  # lone halves, which JSON can spell as "\ud800"
WRONG_TYPES = [None, 0, 1.5, True, {}, {"text": "x"}]  # no lists: a list makes chosen/rejected conversational


def _no_marker(text: str) -> str:
    while MARKER in text:
        text = text.replace(MARKER, "")
    return text


edge_texts = st.sampled_from(EDGE_TEXTS).map(lambda t: HUGE if t == "<huge>" else t)  # keeps 1 MiB out of reprs
texts = st.lists(st.one_of(edge_texts, st.text(max_size=12)), max_size=3).map("".join).map(_no_marker)
responses = texts.map(lambda t: t if t.strip() else t + "r")


def _distinct(first: str, second: str) -> str:
    return second if second != first else second + "!"


@dataclass(frozen=True)
class Case:
    """One record as written, and what the loader must make of it.

    Attributes:
        value: the object written (raw bytes for a broken JSONL line, a list of cells for CSV, a row for Parquet).
        detect: the format auto-detection picks from it; None when it has no known keys or is unreadable.
        faults: format -> None (parses cleanly as that format) or the field a skip must name. Formats not listed:
            any skip will do (a record parsed as a format it was not written for).
        readable: False when the source itself cannot read it (broken JSON, bad bytes, not an object).
        field: for an unreadable record, the field its skip names (a CSV or Parquet column with bad bytes).
        example: (prompt, responses, label) of the Example it becomes when parsed as `detect`, if it parses.
    """

    value: Any
    detect: str | None = None
    faults: dict[str, str | None] = dataclass_field(default_factory=dict)
    readable: bool = True
    field: str | None = None
    example: tuple | None = None


BLANK = None  # a blank line: neither an example nor a skip
ANY = "<any field>"


def bad(value: Any, fmt: str, fault: str) -> Case:
    """A record of format `fmt` whose skip must name `fault`."""
    return Case(value, fmt, {fmt: fault})


def kinds(faults: str) -> st.SearchStrategy[str]:
    """"good" half the time, else one of the space-separated single faults."""
    return st.one_of(st.just("good"), st.sampled_from(faults.split()))


def _with_surrogate(draw: Any, text: str) -> str:
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(SURROGATES)) + text[at:]


# --- one strategy per format: a good record or one with a single, known fault ----------------------------------


@st.composite
def explicit_cases(draw: Any) -> Case:
    p, c = draw(texts), draw(responses)
    r = _distinct(c, draw(responses))
    rec = {"prompt": p, "chosen": c, "rejected": r}
    kind = draw(kinds("wrong_type blank identical surrogate no_rejected"))
    name = draw(st.sampled_from(["prompt", "chosen", "rejected"]))
    if kind == "good":
        return Case(rec, "explicit", {"explicit": None}, example=(p, (c, r), None))
    if kind == "wrong_type":
        rec[name] = draw(st.sampled_from(WRONG_TYPES))
    elif kind == "blank":
        name = name if name != "prompt" else "chosen"  # an empty prompt is allowed
        rec[name] = draw(st.sampled_from(BLANKS))
    elif kind == "identical":
        rec["rejected"], name = c, "rejected"
    elif kind == "surrogate":
        rec[name] = _with_surrogate(draw, rec[name])
    else:
        del rec["rejected"]
        return Case(rec, None, {"explicit": "rejected"})
    return bad(rec, "explicit", name)


@st.composite
def implicit_cases(draw: Any) -> Case:
    h, c = draw(texts), draw(responses)
    r = _distinct(c, draw(responses))
    rec = {"chosen": h + MARKER + c, "rejected": h + MARKER + r}
    kind = draw(kinds("no_marker disagree blank identical wrong_type surrogate"))
    name = draw(st.sampled_from(["chosen", "rejected"]))
    if kind == "good":
        return Case(rec, "implicit", {"implicit": None}, example=(h + MARKER, (c, r), None))
    if kind == "no_marker":
        rec["chosen"], name = c, "chosen"
    elif kind == "disagree":
        rec["rejected"], name = h + "~" + MARKER + r, "rejected"
    elif kind == "blank":
        rec[name] = h + MARKER + draw(st.sampled_from(BLANKS))
    elif kind == "identical":
        rec["rejected"], name = h + MARKER + c, "rejected"
    elif kind == "wrong_type":
        rec[name] = draw(st.sampled_from(WRONG_TYPES))
    else:
        rec[name] = _with_surrogate(draw, rec[name])
    return bad(rec, "implicit", name)


@st.composite
def ranked_cases(draw: Any) -> Case:
    p = draw(texts)
    rs: list[str] = []
    for text in draw(st.lists(responses, min_size=2, max_size=4)):
        rs.append(text if text not in rs else f"{text}#{len(rs)}")
    k = len(rs)
    numbers = st.one_of(st.integers(-5, 5), st.floats(-1e3, 1e3, allow_nan=False))
    scores = draw(st.one_of(st.none(), st.lists(numbers, min_size=k, max_size=k)))
    rec = {"prompt": p, "responses": rs} if scores is None else {"prompt": p, "responses": rs, "scores": scores}
    faults = "not_list one blank duplicate surrogate prompt_type scores_len bad_score scores_type null_scores"
    kind = draw(kinds(faults))
    i = draw(st.integers(0, k - 1))
    if kind in ("good", "null_scores"):
        if kind == "null_scores":
            scores = rec["scores"] = None  # a null column cell means "no scores"
        order = sorted(range(k), key=lambda j: -scores[j]) if scores else range(k)
        return Case(rec, "ranked", {"ranked": None}, example=(p, tuple(rs[j] for j in order), None))
    if kind == "not_list":
        rec["responses"], name = ", ".join(rs), "responses"
    elif kind == "one":
        rec["responses"], name = rs[:1], "responses"
    elif kind == "blank":
        rs[i], name = draw(st.sampled_from(BLANKS)), f"responses[{i}]"
    elif kind == "duplicate":
        rs[-1], name = rs[i % (k - 1)], f"responses[{k - 1}]"
    elif kind == "surrogate":
        rs[i], name = _with_surrogate(draw, rs[i]), f"responses[{i}]"
    elif kind == "prompt_type":
        rec["prompt"], name = draw(st.sampled_from(WRONG_TYPES)), "prompt"
    elif kind == "scores_len":
        rec["scores"], name = [1.0] * (k + 1), "scores"
    elif kind == "bad_score":
        rec["scores"] = [0.0] * k
        rec["scores"][i], name = draw(st.sampled_from(["2", True, None, math.nan, math.inf, [1]])), f"scores[{i}]"
    else:
        rec["scores"], name = draw(st.sampled_from(["high", 3, {"a": 1}])), "scores"
    return bad(rec, "ranked", name)


@st.composite
def unpaired_cases(draw: Any) -> Case:
    p, c, label = draw(texts), draw(responses), draw(st.booleans())
    rec = {"prompt": p, "completion": c, "label": label}
    kind = draw(kinds("label blank completion_type prompt_type no_label surrogate"))
    if kind == "good":
        return Case(rec, "unpaired", {"unpaired": None}, example=(p, (c,), label))
    if kind == "no_label":
        del rec["label"]
        return Case(rec, None, {"unpaired": "label"})
    name = {"label": "label", "prompt_type": "prompt"}.get(kind, "completion")
    rec[name] = {
        "label": lambda: draw(st.sampled_from(["yes", "true", 1, 0, None])),
        "blank": lambda: draw(st.sampled_from(BLANKS)),
        "completion_type": lambda: draw(st.sampled_from(WRONG_TYPES)),
        "prompt_type": lambda: draw(st.sampled_from(WRONG_TYPES)),
        "surrogate": lambda: _with_surrogate(draw, c),
    }[kind]()
    return bad(rec, "unpaired", name)


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def bot(text: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


@st.composite
def conversational_cases(draw: Any) -> Case:
    u, c = draw(texts), draw(responses)
    r = _distinct(c, draw(responses))
    split = draw(st.booleans())  # a "prompt" key, or the prompt shared inside chosen and rejected
    reply = 0 if split else 1  # index of the assistant message in chosen/rejected

    def rec_for(chosen: list, rejected: list) -> dict:
        """From whole conversations [user, assistant] to the record's layout."""
        if split:
            return {"prompt": [user(u)], "chosen": chosen[1:], "rejected": rejected[1:]}
        return {"chosen": chosen, "rejected": rejected}

    faults = "rejected_str rejected_empty no_content blank identical surrogate role_type no_assistant disagree"
    kind = draw(kinds(faults))
    chosen, rejected = [user(u), bot(c)], [user(u), bot(r)]
    name = "rejected"
    if kind == "good":
        prompt = f"<|user|>\n{u}{EOS}\n<|assistant|>\n"
        return Case(rec_for(chosen, rejected), "conversational", {"conversational": None},
                    example=(prompt, (c + EOS + "\n", r + EOS + "\n"), None))
    if kind in ("rejected_str", "rejected_empty"):
        rec = rec_for(chosen, rejected)
        rec["rejected"] = r if kind == "rejected_str" else []
        return bad(rec, "conversational", "rejected")
    if kind == "no_content":
        chosen[1], name = {"role": "assistant"}, f"chosen[{reply}]"
    elif kind == "blank":
        chosen[1], name = bot(draw(st.sampled_from(BLANKS))), "chosen"
    elif kind == "identical":
        rejected[1] = bot(c)
    elif kind == "surrogate":
        chosen[1], name = bot(_with_surrogate(draw, c)), f"chosen[{reply}]"
    elif kind == "role_type":
        chosen[1], name = {"role": 7, "content": c}, f"chosen[{reply}]"
    elif kind == "no_assistant" and not split:
        chosen, name = [user(u)], "chosen"
    elif kind == "disagree" and not split:
        rejected[0] = user(u + "~")
    else:  # no_assistant / disagree need the shared-prompt layout; with a "prompt" key use an identical pair
        rejected[1] = bot(c)
    return bad(rec_for(chosen, rejected), "conversational", name)


def _readable_junk() -> st.SearchStrategy[Case]:
    """JSON that any source can hold but no format fits: objects without known keys, and non-objects."""
    no_keys = st.sampled_from([{}, {"text": "hello"}, {"id": 1, "Prompt": "p"}, {"\ud800": 1}])
    objects = no_keys.map(lambda v: Case(v, None))
    others = st.sampled_from([[1, 2], [], "just text", 3, -0.5, None, True, math.nan, [{"prompt": "p"}]])
    return st.one_of(objects, others.map(lambda v: Case(v, readable=False)))


BY_FORMAT = {"explicit": explicit_cases(), "implicit": implicit_cases(), "ranked": ranked_cases(),
             "unpaired": unpaired_cases(), "conversational": conversational_cases()}
any_format_case = st.one_of(*BY_FORMAT.values())


NOTHING = st.nothing()


@st.composite
def files_of(draw: Any, extra: st.SearchStrategy = NOTHING, max_size: int = 12) -> tuple[list, str]:
    """(records, format to load them as): mostly one format's records, mixed with other formats' and junk."""
    main = draw(st.sampled_from(list(BY_FORMAT)))
    mixed = st.one_of(*[BY_FORMAT[main]] * 6, any_format_case, _readable_junk(), extra)
    cases = draw(st.lists(mixed, max_size=max_size))
    for _ in range(draw(st.integers(0, 2))):  # duplicated records
        if cases:
            cases.insert(draw(st.integers(0, len(cases))), draw(st.sampled_from(cases)))
    return cases, draw(st.sampled_from(["auto"] * 3 + [main] * 3 + list(BY_FORMAT)))


def _dumps(value: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate can only be written escaped
        return json.dumps(value).encode("utf-8")


@st.composite
def broken_lines(draw: Any) -> Case:
    """A JSONL line the reader cannot turn into an object. None contains a newline byte."""
    line = _dumps(draw(any_format_case).value, draw(st.booleans()))
    kind = draw(st.sampled_from(["truncated", "bad_byte", "junk"]))
    if kind == "truncated":
        raw = line[: draw(st.integers(1, len(line) - 1))]
    elif kind == "bad_byte":
        text = line.decode("utf-8")
        at = draw(st.integers(0, len(text)))  # at a character boundary, so the lone byte never completes a character
        raw = (text[:at] + chr(0xDC00 + draw(st.sampled_from([0x80, 0xBF, 0xC3, 0xED, 0xFE, 0xFF]))) + text[at:])
        raw = raw.encode("utf-8", "surrogateescape")
    else:
        raw = draw(st.sampled_from([
            b"\x00", b"\x0c", b"\x1c", "\u00a0".encode(), "\u3000".encode(), "\u2028".encode(), b"[" * 50_000,
            b'{"prompt": ' + b"9" * 5000 + b"}", b"{'prompt': 'p'}", b'{"a": 1} {"b": 2}', b"NaN", b"nul",
            b'{"prompt": "p", "chosen": "c", "rejected": "r"', b"\xef\xbb\xbf" * 2,
        ]))
    return Case(raw, readable=False)


def _blank_line() -> st.SearchStrategy[bytes]:
    return st.sampled_from([b"", b" ", b"\t", b"\r", b"  \t \r"])


@st.composite
def jsonl_files(draw: Any) -> tuple[bytes, list[Case | None], str]:
    """(file bytes, one entry per line: a Case, or BLANK; the format to load it as)."""
    cases, fmt = draw(files_of(st.one_of(broken_lines(), _blank_line())))
    ascii_only = draw(st.booleans())
    raw = [c if isinstance(c, bytes) else c.value if isinstance(c.value, bytes) else _dumps(c.value, ascii_only)
           for c in cases]
    ends = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in raw]
    if ends and draw(st.booleans()):
        ends[-1] = b""  # no newline at the end of the file
    bom = b"\xef\xbb\xbf" if draw(st.booleans()) else b""
    data = bom + b"".join(line + end for line, end in zip(raw, ends, strict=True))
    return data, [BLANK if isinstance(c, bytes) else c for c in cases], fmt


# --- the spec, and the two properties --------------------------------------------------------------------------


@dataclass
class Expected:
    format: str
    examples: list[tuple[int, Case]]
    skips: list[tuple[int, str | None]]  # (line, field); field ANY: any field will do


def expected(cases: list[Case | None], fmt: str, lines: list[int] | None = None) -> Expected:
    """What `load_examples(format=fmt)` must return; `lines[i]` is the line case i is reported at (default i + 1)."""
    out = Expected(fmt, [], [])
    for i, case in enumerate(cases):
        line = lines[i] if lines else i + 1
        if case is BLANK:
            continue
        if not case.readable:
            out.skips.append((line, case.field))
            continue
        if out.format == "auto":
            if case.detect is None:
                out.skips.append((line, None))  # "cannot detect the format"
                continue
            out.format = case.detect
        fault = case.faults.get(out.format, ANY)
        if fault is None:
            out.examples.append((line, case))
        else:
            out.skips.append((line, fault))
    return out


def check(path: str, cases: list[Case | None], fmt: str, tokenizer: Any, lines: list[int] | None = None) -> None:
    """Both properties: skip mode accounts for every record exactly; error mode stops at the first bad one."""
    want = expected(cases, fmt, lines)
    event(f"examples: {min(len(want.examples), 3)}, skips: {min(len(want.skips), 3)} (3 = 3 or more)")
    check_skip_mode(path, want, fmt, tokenizer)
    check_error_mode(path, want, fmt, tokenizer)


def check_skip_mode(path: str, want: Expected, fmt: str, tokenizer: Any) -> None:
    try:
        result = load_examples(path, format=fmt, on_bad_record="skip", tokenizer=tokenizer)
    except DataError as err:
        assert not want.examples, f"raised although lines {[n for n, _ in want.examples]} are usable: {err}"
        assert err.source == path and "no usable examples" in err.reason
        str(err).encode("utf-8")  # printable
        return
    assert [ex.line for ex in result.examples] == [n for n, _ in want.examples]
    assert [s.line for s in result.skipped] == [n for n, _ in want.skips]
    assert result.format == want.format
    for ex, (_, case) in zip(result.examples, want.examples, strict=True):
        assert ex.source == path
        if case.example is not None and case.detect == want.format:
            assert (ex.prompt, ex.responses, ex.label) == case.example
    for skip, (_, field_) in zip(result.skipped, want.skips, strict=True):
        assert skip.source == path and skip.reason
        assert field_ is ANY and skip.field is not None or skip.field == field_, (skip, field_)
    result.report().encode("utf-8")  # a skip report can always be logged


def check_error_mode(path: str, want: Expected, fmt: str, tokenizer: Any) -> None:
    if want.skips or not want.examples:
        with pytest.raises(DataError) as err:
            load_examples(path, format=fmt, on_bad_record="error", tokenizer=tokenizer)
        assert err.value.source == path
        str(err.value).encode("utf-8")
        if not want.skips:
            assert err.value.line is None and "the source has no records" in err.value.reason
            return
        line, field_ = want.skips[0]
        assert err.value.line == line
        assert field_ is ANY and err.value.field is not None or err.value.field == field_
    else:
        result = load_examples(path, format=fmt, on_bad_record="error", tokenizer=tokenizer)
        assert [ex.line for ex in result.examples] == [n for n, _ in want.examples]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Any:
    return train_bpe_tokenizer(["hello world, how are you"] * 4, vocab_size=280)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@settings(FUZZ, max_examples=60)
@given(file=jsonl_files())
def test_jsonl_lines_become_examples_or_counted_skips(
    workdir: Path, chat_tokenizer: Any, suffix: str, file: tuple[bytes, list, str]
) -> None:
    data, cases, fmt = file
    path = workdir / f"d{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    check(str(path), cases, fmt, chat_tokenizer)


@FUZZ
@given(file=files_of(max_size=10), ascii_only=st.booleans())
def test_json_items_become_examples_or_counted_skips(
    workdir: Path, chat_tokenizer: Any, file: tuple[list[Case], str], ascii_only: bool
) -> None:
    cases, fmt = file
    path = workdir / "d.json"
    path.write_bytes(_dumps([c.value for c in cases], ascii_only))
    check(str(path), cases, fmt, chat_tokenizer)


@FUZZ
@given(cases=st.lists(any_format_case, min_size=1, max_size=4), data=st.data())
def test_truncated_json_file_is_one_data_error_naming_it(workdir: Path, cases: list[Case], data: st.DataObject) -> None:
    whole = _dumps([c.value for c in cases], False)
    path = workdir / "t.json"
    path.write_bytes(whole[: data.draw(st.integers(0, len(whole) - 1))])
    with pytest.raises(DataError, match="invalid JSON") as err:
        load_examples(str(path), on_bad_record="skip")
    assert err.value.source == str(path)


# --- CSV: one explicit-format table, damaged one cell or row at a time ----------------------------------------

HEADER = ["prompt", "chosen", "rejected"]
# A cell starting with "[" may be decoded as a JSON list (test_data_sources covers that); keep plain text here.
csv_texts = texts.map(lambda t: "x" + t if t.lstrip().startswith("[") else t)
csv_responses = csv_texts.map(lambda t: t if t.strip() else t + "r")


@st.composite
def csv_rows(draw: Any) -> tuple[list[str], Case | None]:
    p, c = draw(csv_texts), draw(csv_responses)
    cells = [p, c, _distinct(c, draw(csv_responses))]
    kind = draw(kinds("short long blank identical bad_bytes"))
    if kind == "good":
        return cells, Case(dict(zip(HEADER, cells, strict=True)), "explicit", {"explicit": None},
                           example=(p, (cells[1], cells[2]), None))
    if kind == "short":
        n = draw(st.integers(0, 2))  # 0 cells is a blank line; 1 or 2 lack "chosen" or "rejected"
        return cells[:n], (BLANK if n == 0 else Case(cells[:n], None, {"explicit": HEADER[n]}))
    if kind == "long":
        return [*cells, draw(csv_texts)], Case(cells, readable=False)
    if kind == "bad_bytes":
        i = draw(st.integers(0, 2))
        at = draw(st.integers(0, len(cells[i])))
        cells[i] = cells[i][:at] + chr(0xDC00 + draw(st.sampled_from([0x80, 0xC3, 0xFF]))) + cells[i][at:]
        return cells, Case(cells, readable=False, field=HEADER[i])
    i = 2 if kind == "identical" else draw(st.integers(1, 2))
    cells[i] = cells[1] if kind == "identical" else draw(st.sampled_from(BLANKS))
    return cells, bad(cells, "explicit", HEADER[i])


def _line_breaks(text: str) -> int:
    """Line breaks as csv.reader counts them (a file opened with newline=""): \\r\\n, \\r or \\n."""
    return len(re.findall(r"\r\n|\r|\n", text))


@FUZZ
@given(rows=st.lists(csv_rows(), max_size=10), fmt=st.sampled_from(["auto", "explicit"]), bom=st.booleans())
def test_csv_rows_become_examples_or_counted_skips(
    workdir: Path, rows: list[tuple[list[str], Case | None]], fmt: str, bom: bool
) -> None:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(HEADER)
    lines = []
    for cells, _ in rows:
        lines.append(1 + _line_breaks(out.getvalue()))
        writer.writerow(cells)
    path = workdir / "d.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8", "surrogateescape"))
    check(str(path), [case for _, case in rows], fmt, None, lines)


def test_csv_header_that_is_not_utf8_fails_the_file_at_line_1(tmp_path: Path) -> None:
    """Every column name would be garbled (a latin-1 file, say), so no row can be read right: one error, not N skips."""
    path = tmp_path / "d.csv"
    path.write_bytes("pr\u00e9f\u00e9r\u00e9,chosen,rejected\np,c,r\n".encode("latin-1"))
    with pytest.raises(DataError, match="invalid UTF-8 in the header row") as err:
        load_examples(str(path), on_bad_record="skip")
    assert (err.value.source, err.value.line) == (str(path), 1)


# --- Parquet: typed columns, so the damage is nulls, blanks and bytes that are not UTF-8 -----------------------


@st.composite
def parquet_rows(draw: Any) -> tuple[dict[str, Any], Case]:
    p, c = draw(csv_texts), draw(responses)
    row = {"prompt": p, "chosen": c, "rejected": _distinct(c, draw(responses))}
    kind = draw(kinds("null blank identical bad_bytes"))
    name = draw(st.sampled_from(HEADER))
    if kind == "good":
        return row, Case(row, "explicit", {"explicit": None}, example=(p, (row["chosen"], row["rejected"]), None))
    if kind == "bad_bytes":
        at = draw(st.integers(0, len(row[name])))
        row[name] = row[name][:at] + chr(0xDC00 + draw(st.sampled_from([0x80, 0xC3, 0xFF]))) + row[name][at:]
        return row, Case(row, readable=False, field=name)
    if kind == "null":
        row[name] = None
    elif kind == "blank":
        name = name if name != "prompt" else "rejected"
        row[name] = draw(st.sampled_from(BLANKS))
    else:
        row["rejected"], name = row["chosen"], "rejected"
    return row, bad(row, "explicit", name)


def _string_column(values: list[str | None]) -> pa.Array:
    """Arrow validates UTF-8 when it builds a string array, so write the bytes as binary and relabel them."""
    raw = [v if v is None else v.encode("utf-8", "surrogateescape") for v in values]
    return pa.array(raw, type=pa.binary()).view(pa.string())


@FUZZ
@given(rows=st.lists(parquet_rows(), max_size=8), group_size=st.integers(1, 4),
       fmt=st.sampled_from(["auto", "explicit"]))
def test_parquet_rows_become_examples_or_counted_skips(
    workdir: Path, rows: list[tuple[dict, Case]], group_size: int, fmt: str
) -> None:
    columns = {name: _string_column([r[name] for r, _ in rows]) for name in HEADER}
    columns["meta"] = pa.array([[i] * (i % 3) for i in range(len(rows))], type=pa.list_(pa.int64()))
    path = workdir / "d.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=group_size)
    check(str(path), [case for _, case in rows], fmt, None)


@pytest.fixture(scope="module")
def parquet_bytes() -> bytes:
    rows = [{"prompt": f"p{i}", "chosen": "good " * (i % 7) + str(i), "rejected": f"bad {i}"} for i in range(600)]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=100, compression="snappy")
    return sink.getvalue()


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=4),
       footer=st.sampled_from([False, False, False, True]))
def test_corrupt_parquet_bytes_give_skips_or_a_data_error(
    workdir: Path, parquet_bytes: bytes, flips: list[tuple[float, int]], footer: bool
) -> None:
    """Damaged pages lose their row group (one skip per row, lines kept); a damaged footer fails the whole file."""
    data = bytearray(parquet_bytes)
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")  # ... footer, 4-byte length, b"PAR1"
    start, end = (footer_start, len(data) - 8) if footer else (4, footer_start)
    for where, value in flips:
        data[start + int(where * (end - start - 1))] = value
    path = workdir / "c.parquet"
    path.write_bytes(bytes(data))
    try:
        result = load_examples(str(path), on_bad_record="skip")
    except DataError as err:
        event("DataError: " + ("no usable examples" if "no usable" in err.reason else err.reason.split(":")[0]))
        assert err.source == str(path)
        return
    event(f"loaded, {'some' if result.skipped else 'no'} skips")
    lines = sorted([ex.line for ex in result.examples] + [s.line for s in result.skipped])
    assert lines == list(range(1, len(lines) + 1))
    assert all(s.source == str(path) and s.reason for s in result.skipped)


# --- the catalog: each kind of damage once, with the exact skip it must produce --------------------------------

GOOD = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode()
CATALOG = {
    # name: (second line of an explicit JSONL file, field, start of the reason)
    "truncated JSON": (GOOD[:-9], None, "invalid JSON: Invalid control character"),  # the newline ends the string
    "not an object": (b"[1, 2]", None, "expected a JSON object, got array"),
    "invalid UTF-8": (b'{"prompt": "caf\xe9"}', None, "invalid UTF-8 (byte 16 of the line)"),
    "UTF-16": ('{"a": 1}'.encode("utf-16-le"), None, "invalid JSON"),
    "NUL byte": (b"\x00", None, "invalid JSON"),
    "NBSP-only line": ("\u00a0".encode(), None, "invalid JSON"),
    "BOM not on line 1": (b"\xef\xbb\xbf" + GOOD, None, "invalid JSON"),
    "nested 100k deep": (b"[" * 100_000, None, "invalid JSON: nested too deeply to parse"),
    "5000-digit integer": (b'{"prompt": ' + b"1" * 5000 + b"}", None, "invalid JSON: Exceeds the limit (4300 digits)"),
    "null field": (b'{"prompt": null, "chosen": "c", "rejected": "r"}', "prompt", "expected a string, got null"),
    "number field": (b'{"prompt": "p", "chosen": 1e999, "rejected": "r"}', "chosen", "expected a string, got number"),
    "lone surrogate": (b'{"prompt": "p", "chosen": "c", "rejected": "\\udfff"}', "rejected",
                       "invalid Unicode: lone surrogate U+DFFF at character 1"),
    "empty response": (b'{"prompt": "p", "chosen": "", "rejected": "r"}', "chosen", "empty or whitespace-only"),
    "zero-width only": ('{"prompt": "p", "chosen": "\u200b", "rejected": "\u200c"}'.encode(), None, None),
    "RTL + combining + emoji": ('{"prompt": "\u202e\u05e9", "chosen": "e\u0301", "rejected": "\U0001f642"}'.encode(),
                                None, None),
    "NUL inside a string": (b'{"prompt": "\\u0000", "chosen": "a\\u0000", "rejected": "b"}', None, None),
    "1 MiB field": (json.dumps({"prompt": "p", "chosen": HUGE, "rejected": "r"}).encode(), None, None),
    "duplicate of line 1": (GOOD, None, None),
    "other format's keys": (b'{"prompt": "p", "responses": ["a", "b"]}', "chosen", "missing field"),
    "duplicate keys": (b'{"prompt": "p", "chosen": "c", "rejected": "r", "rejected": "c"}', "rejected",
                       "chosen and rejected are identical"),
}


@pytest.mark.parametrize("name", list(CATALOG))
def test_catalog_case(tmp_path: Path, name: str) -> None:
    line, field_, reason = CATALOG[name]
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD + b"\n" + line + b"\n")
    result = load_examples(str(path), on_bad_record="skip")
    if reason is None:  # loads as an example
        assert (len(result.examples), result.skipped) == (2, [])
        return
    (skip,) = result.skipped
    assert (skip.source, skip.line, skip.field) == (str(path), 2, field_)
    assert skip.reason.startswith(reason), skip.reason
