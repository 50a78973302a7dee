"""Read raw records from files and datasets, lazily, each tagged with where it came from.

A source yields `RawRecord`s and never judges their content: a line that is broken JSON or bad UTF-8 comes back as a
record with `error` set, so the caller's skip-or-raise policy decides what happens. Only problems with the whole
source (missing file, unreadable gzip, a `.json` file that does not parse) raise `DataError` here.

Supported: `.jsonl`, `.jsonl.gz`, `.json` (a top-level list of objects), `.parquet`, `.csv`, a directory written by
`datasets.Dataset.save_to_disk`, a local directory `datasets.load_dataset` understands, or a hub dataset name.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpokit.core.errors import DataError
from dpokit.core.paths import FILE_SUFFIXES, looks_local

# CSV cells are strings; these fields hold lists in every format that has them, so a cell starting with "[" is JSON.
_CSV_LIST_FIELDS = {"responses", "scores"}
# These are strings in most formats but message lists in the conversational one: decode only a JSON list of objects.
_CSV_MESSAGE_FIELDS = {"prompt", "chosen", "rejected"}
_CSV_BOOLS = {"true": True, "false": False, "1": True, "0": False}

# Whitespace as JSON defines it: a line of only these is blank. Python's str.strip() also strips NBSP, U+3000, form
# feeds and \x1c-\x1f, and a line of those is not blank but broken JSON that must be reported.
_JSON_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class RawRecord:
    """One record as read, before any format is applied.

    Attributes:
        source: the path or dataset name it came from.
        line: 1-based line (JSONL, and CSV as an editor shows it, header being line 1), item (JSON) or row index.
        record: the parsed object, or None when `error` is set.
        error: why the record could not be read (broken JSON, invalid UTF-8, not an object), or None.
        field: with `error`, the field at fault when the source can tell (a CSV column, a Parquet column).
    """

    source: str
    line: int
    record: dict[str, Any] | None = None
    error: str | None = None
    field: str | None = None

    def __post_init__(self) -> None:
        if (self.record is None) == (self.error is None):
            raise ValueError("RawRecord needs exactly one of record and error")


def read_records(path: str, split: str = "train") -> Iterator[RawRecord]:
    """Yields the records of `path` lazily, in file order.

    Whether the source exists is checked now, so a wrong path fails at the call rather than at the first `next()`.

    Args:
        path: a file with a supported suffix, a dataset directory, or a hub dataset name.
        split: the split to read from a dataset (ignored for plain files).

    Raises:
        DataError: the file is missing, of an unsupported type, or the dataset cannot be loaded.
    """
    path = str(path)
    suffix = _file_suffix(path)
    if suffix is not None:
        if not os.path.isfile(path):
            raise DataError("no such file", source=path)
        return _READERS[suffix](path)
    if os.path.isdir(path):
        return _read_dataset_dir(path, split)
    if os.path.exists(path):
        raise DataError(
            f"unsupported file type; expected one of {', '.join(FILE_SUFFIXES)}, a dataset directory or a hub name",
            source=path,
        )
    if looks_local(path):
        raise DataError("no such file or directory", source=path)
    return _read_hub(path, split)


def _file_suffix(path: str) -> str | None:
    lower = path.lower()
    return next((s for s in FILE_SUFFIXES if lower.endswith(s)), None)


def printable(text: str) -> str:
    """`text` with lone surrogates (from "\\ud800" escapes or undecodable bytes) escaped: messages stay UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_failure(err: ValueError | RecursionError) -> str:
    """Why `json.loads` failed on a line or cell. Besides `JSONDecodeError` it raises a plain ValueError for an integer
    over `sys.get_int_max_str_digits()` digits and RecursionError for deep nesting like [[[[...]]]]."""
    if isinstance(err, json.JSONDecodeError):
        return f"invalid JSON: {err.msg} (column {err.colno})"
    if isinstance(err, RecursionError):
        return "invalid JSON: nested too deeply to parse"
    return f"invalid JSON: {str(err).split(';')[0]}"  # drop the advice to call sys.set_int_max_str_digits()


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages: object, array, string, boolean, null, number."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


# --- JSON Lines and JSON -------------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> Iterator[RawRecord]:
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line, raw in enumerate(f, 1):
                if line == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8) :]
                record = _parse_jsonl_line(path, line, raw)
                if record is not None:
                    yield record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; EOFError is a truncated gzip stream
        raise DataError(f"cannot read file: {e}", source=path) from e


def _parse_jsonl_line(path: str, line: int, raw: bytes) -> RawRecord | None:
    """Parses one line; None for a whitespace-only line, which editors and `jq` also ignore."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RawRecord(path, line, error=f"invalid UTF-8 (byte {e.start + 1} of the line)")
    if not text.strip(_JSON_WHITESPACE):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        return RawRecord(path, line, error=_json_failure(e))
    if not isinstance(value, dict):
        return RawRecord(path, line, error=f"expected a JSON object, got {json_type(value)}")
    return RawRecord(path, line, record=value)


def _read_json(path: str) -> Iterator[RawRecord]:
    """A `.json` file must be parsed whole, so a syntax error anywhere makes the whole file unusable."""
    try:
        value = json.loads(Path(path).read_bytes())
    except RecursionError as e:
        raise DataError(_json_failure(e), source=path) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise DataError(f"invalid JSON: {str(e).split(';')[0]}", source=path) from e
    if not isinstance(value, list):
        hint = f" (keys: {printable(', '.join(map(str, value)))[:200]})" if isinstance(value, dict) else ""
        raise DataError(f"expected a top-level JSON array of objects, got {json_type(value)}{hint}", source=path)
    return _json_items(path, value)


def _json_items(path: str, items: list[Any]) -> Iterator[RawRecord]:
    for line, item in enumerate(items, 1):
        if isinstance(item, dict):
            yield RawRecord(path, line, record=item)
        else:
            yield RawRecord(path, line, error=f"expected a JSON object, got {json_type(item)}")


# --- Parquet and CSV -----------------------------------------------------------------------------------------------


def _read_parquet(path: str) -> Iterator[RawRecord]:
    """Rows in file order. Damage inside the data stays local: a row group that cannot be decoded (corrupt page,
    bad compression) becomes one error record per row, as the footer says how many rows each group holds, so line
    numbers stay right and the other groups still load. Only an unreadable footer fails the whole file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet file: {e}", source=path) from e
    line = 0
    with parquet:
        for group in range(parquet.num_row_groups):
            end = line + parquet.metadata.row_group(group).num_rows
            try:
                for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                    records = _batch_records(path, line + 1, batch)
                    line += len(records)
                    yield from records
            except (pa.ArrowException, OSError) as e:  # ArrowInvalid is also a ValueError; IO errors are OSErrors
                error = f"unreadable Parquet row group {group}: {printable((str(e).splitlines() or [''])[0])}"
                while line < end:
                    line += 1
                    yield RawRecord(path, line, error=error)


def _batch_records(path: str, first_line: int, batch: Any) -> list[RawRecord]:
    """A batch's rows; Arrow does not validate every string column, so a cell that is not UTF-8 fails its row only."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        return [_row_record(path, first_line + i, batch.slice(i, 1)) for i in range(batch.num_rows)]
    return [RawRecord(path, first_line + i, record=row) for i, row in enumerate(rows)]


def _row_record(path: str, line: int, row: Any) -> RawRecord:
    for name, column in zip(row.schema.names, row.columns, strict=True):
        try:
            column.to_pylist()
        except UnicodeDecodeError as e:
            return RawRecord(path, line, error=f"invalid UTF-8 (byte {e.start + 1} of the cell)", field=name)
    return RawRecord(path, line, record=row.to_pylist()[0])


def _read_csv(path: str) -> Iterator[RawRecord]:
    """Reads a CSV with a header row; `line` is the editor line where the record starts (header = line 1).

    Bytes that are not UTF-8 are kept as surrogate escapes so that one bad row becomes one bad record.
    """
    # Preference data has cells far above csv's 128 KiB default; raising the (process-wide) limit is harmless.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = _next_row(reader, path)
        if header is not None and any(map(_has_bad_bytes, header)):
            # Every column name would be garbled, so no row could be read right: a whole-file problem.
            raise DataError("invalid UTF-8 in the header row (is the file in another encoding?)", source=path, line=1)
        while True:
            start = reader.line_num + 1
            row = _next_row(reader, path)
            if row is None:
                return
            if row:  # csv.reader returns [] for a blank line
                yield _csv_record(path, start, header, row)


def _next_row(reader: Any, path: str) -> list[str] | None:
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", source=path, line=reader.line_num) from e


def _csv_record(path: str, line: int, header: list[str] | None, row: list[str]) -> RawRecord:
    header = header or []
    if len(row) > len(header):
        return RawRecord(path, line, error=f"row has {len(row)} cells but the header has {len(header)}")
    bad = next((i for i, cell in enumerate(row) if _has_bad_bytes(cell)), None)
    if bad is not None:
        return RawRecord(path, line, error="invalid UTF-8", field=header[bad])
    # A short row simply lacks its last fields, which the format then reports as missing.
    cells = zip(header, row, strict=False)
    return RawRecord(path, line, record={name: _decode_csv_cell(name, cell) for name, cell in cells})


def _has_bad_bytes(cell: str) -> bool:
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decode_csv_cell(name: str, cell: str) -> Any:
    """Turns a CSV string back into the list or boolean the field holds in JSON; leaves it as text otherwise."""
    if name == "label":
        return _CSV_BOOLS.get(cell.strip().lower(), cell)
    if not cell.lstrip().startswith("[") or name not in _CSV_LIST_FIELDS | _CSV_MESSAGE_FIELDS:
        return cell
    try:
        value = json.loads(cell)
    except (ValueError, RecursionError):  # broken, an over-long integer, or nested too deeply
        return cell  # the format reports the field as "expected a list, got string"
    is_messages = isinstance(value, list) and value and all(isinstance(m, dict) for m in value)
    if name in _CSV_MESSAGE_FIELDS and not is_messages:
        return cell  # prose that happens to start with "[", like "[1] see above"
    return value


# --- datasets ------------------------------------------------------------------------------------------------------


def _read_dataset_dir(path: str, split: str) -> Iterator[RawRecord]:
    """A directory from `save_to_disk` (it holds state.json or dataset_dict.json) or one `load_dataset` can read."""
    if not any(os.path.isfile(os.path.join(path, name)) for name in ("state.json", "dataset_dict.json")):
        return _read_hub(path, split)
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load dataset directory: {e}", source=path) from e
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"no split {split!r}; the dataset has {', '.join(loaded)}", source=path)
        loaded = loaded[split]
    return _dataset_rows(path, loaded)


def _read_hub(path: str, split: str) -> Iterator[RawRecord]:
    import datasets

    try:
        dataset = datasets.load_dataset(path, split=split)
    except Exception as e:  # datasets raises many types (hub, network, split, builder); all mean "cannot load"
        raise DataError(
            f"not a local file, and datasets.load_dataset(split={split!r}) failed: {type(e).__name__}: {e}",
            source=path,
        ) from e
    return _dataset_rows(path, dataset)


def _dataset_rows(path: str, dataset: Any) -> Iterator[RawRecord]:
    for line, row in enumerate(dataset, 1):
        yield RawRecord(path, line, record=dict(row))


_READERS = {
    ".jsonl.gz": _read_jsonl,
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}
