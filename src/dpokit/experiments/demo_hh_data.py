"""The HH demo's data: the Anthropic HH pairs read, filtered and split by a seed.

    HH JSONL ("chosen"/"rejected" dialogues) -> clean pairs (one shared prompt, two different non-empty replies)
      single-turn pairs (one human turn, then the reply) --> held out: judge agreement, win rates, implicit rewards
      every other pair (multi-turn, and the single-turn ones not held out) --> judge-training | preference-training

The paper evaluates on "the subset of the test split with one step of human–assistant interaction" (§6.2), and
trains on the full dialogues; so does the demo.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path

from dpokit.core.errors import ConfigError, DataError
from dpokit.data.chat import hh_messages

HH_FILE = "hh_harmless_test.jsonl.gz"


@dataclass
class Splits:
    """The seeded split of the HH pairs, as conversational records ({prompt, chosen, rejected} messages)."""

    pref: list[dict]  # preference training: Preferred-FT, DPO, Best-of-N's reward model, online DPO's prompts
    judge: list[dict]  # the judge reward model's training pairs
    held_out: list[dict]  # single-turn only: judge agreement, then (their first ones) win rates and implicit rewards
    usable: int  # pairs that passed the filters
    single_turn: int  # of them, single-turn
    total: int  # pairs in the file


def find_hh_data(path: str | None) -> Path:
    """The HH file: `path`, or ../shared/data/ beside the working directory or beside the dpokit checkout."""
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"--data: no such file: {path}")
        return Path(path)
    here = Path(__file__).resolve()
    for base in (Path.cwd(), Path.cwd().parent, *here.parents):
        candidate = base / "shared" / "data" / HH_FILE
        if candidate.is_file():
            return candidate
    raise ConfigError(f"the HH data ({HH_FILE}) is not in ../shared/data: pass --data PATH (Anthropic HH JSONL with "
                      "chosen/rejected dialogues)")


def hh_pair(row: dict, where: str) -> dict | None:
    """A conversational record from an HH row, or None when the two dialogues do not form a clean pair (they differ
    before the last reply, a reply is empty, or both replies are the same)."""
    try:
        chosen, rejected = hh_messages(row["chosen"]), hh_messages(row["rejected"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"not an HH record ({err})", source=where) from None
    if not chosen or chosen[:-1] != rejected[:-1] or chosen[-1]["role"] != "assistant" or len(chosen) < 2:
        return None
    if not chosen[-1]["content"] or not rejected[-1]["content"] or chosen[-1] == rejected[-1]:
        return None
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def is_single_turn(record: dict) -> bool:
    """One step of human–assistant interaction: the prompt is one user message (the reply is the assistant's)."""
    return len(record["prompt"]) == 1 and record["prompt"][0]["role"] == "user"


def read_pairs(path: Path, max_chars: int) -> tuple[list[dict], int]:
    """The clean pairs whose chosen dialogue has at most `max_chars` characters, and the number of rows read."""
    records: list[dict] = []
    total = 0
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"not JSON ({err.msg})", source=f"{path}:{line_no}") from None
            pair = hh_pair(row, f"{path}:{line_no}")
            if pair is not None and len(row["chosen"]) <= max_chars:
                records.append(pair)
    return records, total


def split_hh(path: Path, held_out: int, judge_pairs: int, pref_pairs: int, max_chars: int, seed: int) -> Splits:
    """Reads, filters and splits the pairs: `held_out` single-turn pairs first, then from all the rest the judge's,
    then the preference-training ones (each list shuffled by `seed`)."""
    records, total = read_pairs(path, max_chars)
    random.Random(seed).shuffle(records)
    single = [r for r in records if is_single_turn(r)]
    if len(single) < held_out:
        raise DataError(f"{len(single)} usable single-turn pairs, but {held_out} are to be held out", source=str(path))
    held = single[:held_out]
    kept = {id(r) for r in held}
    rest = [r for r in records if id(r) not in kept]
    if len(rest) < judge_pairs + pref_pairs:
        raise DataError(f"{len(rest)} pairs left after the held-out ones, but the judge and preference splits need "
                        f"{judge_pairs + pref_pairs}", source=str(path))
    judge, pref = rest[:judge_pairs], rest[judge_pairs:judge_pairs + pref_pairs]
    return Splits(pref, judge, held, len(records), len(single), total)


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
