"""`data.*`: where preference data comes from and how it is cut to length (train, sft, eval, rm)."""

from __future__ import annotations

from dataclasses import dataclass

from dpokit.core.settings import setting


@dataclass
class DataConfig:
    path: str = setting("", "JSONL/JSON/Parquet/CSV file, or a `datasets` name or directory")
    format: str = setting("auto", "auto | explicit | implicit | conversational | ranked | unpaired",
                          choices=("auto", "explicit", "implicit", "conversational", "ranked", "unpaired"))
    split: str = setting("train", "split name for `datasets` sources")
    eval_path: str | None = setting(None, "held-out file; otherwise eval_fraction of `path` is held out")
    eval_fraction: float = setting(0.0, "fraction of examples held out for evaluation (deterministic under "
                                        "train.seed)")
    prompt_marker: str = setting("\n\nAssistant:", "implicit format: the prompt ends at the last occurrence of this")
    on_bad_record: str = setting("error", "error: stop at the first bad record, naming file, line, field | skip: "
                                          "count it", choices=("error", "skip"))
    max_length: int = setting(512, "prompt + response tokens, per sequence", gt=0)
    max_prompt_length: int | None = setting(None, "over-long examples cut the prompt to this first; null: "
                                                  "max_length // 2", gt=0)
    prompt_truncation: str = setting("keep_end", "keep_end (dialogues: keep the last turns) | keep_start | none "
                                                 "(never cut)", choices=("keep_end", "keep_start", "none"))
    limit: int | None = setting(None, "use only the first N examples (after validation)", gt=0)
    cache: bool = setting(True, "keep the tokenized examples of local data files on disk: a second run with the same "
                                "files, tokenizer and settings skips reading and tokenizing them")
    cache_dir: str = setting("", "where the tokenization cache is kept; empty: $DPOKIT_CACHE/tokenized, by default "
                                 "~/.cache/dpokit/tokenized")
