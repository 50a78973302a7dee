"""`dpokit winrate`'s settings, and the prompt sets it judges on.

A prompt set is a file (or `datasets` name) of records, each with a prompt and the baseline's response:
- `{"prompt": str | [messages], "chosen": str, ...}`: the baseline field (`baseline`, e.g. "chosen") holds the
  baseline's response (a string, or messages whose last assistant message is the response);
- preference data without a "prompt" field, such as Anthropic HH (`chosen`/`rejected` whole dialogues): the prompt is
  everything up to the last "\\n\\nAssistant:", the baseline field's response what follows it; with a chat template
  the prompt becomes {role, content} messages (`data.chat.hh_messages`);
- `.txt`, one prompt per line: only with a baseline model.

Sets and models are named `name=path`; a bare path is named by its file name (`hh_test.jsonl` -> "hh_test").
"""

from __future__ import annotations

import re
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from dpokit.core.errors import ConfigError, DataError
from dpokit.core.model_source import PACKAGED, check_model_dir
from dpokit.core.sections import Tracking, check_report_to, sampling
from dpokit.core.settings import setting
from dpokit.data.chat import hh_messages
from dpokit.data.formats import DEFAULT_PROMPT_MARKER, BadRecord, after_last_marker, messages
from dpokit.data.prompts import prompt_of, read_prompts
from dpokit.data.sources import RawRecord, read_records
from dpokit.eval.judges import JudgeConfig, Prompt

DEFAULT_TEMPERATURES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class WinrateConfig(Tracking):
    """Keys of `dpokit winrate` (YAML, flags, or key=value overrides); the tracking keys come from `Tracking` (win
    rates are logged as win_rate/<model>/<prompt set> at step = temperature x 100)."""

    models: list[str] = setting(factory=list, help="models to judge, each `name=path` or a path (directory, hub "
                                                   "name, .gguf, smollm2-135m-instruct); --model, repeatable")
    prompts: list[str] = setting(factory=list, help="prompt sets, each `name=path` or a path: JSONL/JSON/Parquet/"
                                                    "CSV/dataset records with a prompt and the baseline field, "
                                                    "preference data such as HH, or .txt with a baseline model; "
                                                    "--prompts, repeatable (e.g. in-distribution and OOD)")
    baseline: str = setting("chosen", "the baseline: a field of the prompt records holding its response (a bare "
                                      "word, e.g. chosen), or a model sampled like the others (a path, org/name "
                                      "or smollm2-135m-instruct)")
    baseline_temperature: float | None = setting(None, "a baseline model's sampling temperature (default: the same "
                                                       "as the model's it is compared with)")
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    temperatures: list[float] = setting(factory=lambda: list(DEFAULT_TEMPERATURES),
                                        help="sampling temperatures (0 = greedy; one sample per prompt there)")
    num_samples: int = setting(1, "completions per prompt at each temperature above 0", gt=0)
    max_new_tokens: int = sampling("max_new_tokens", 128)
    top_p: float = sampling("top_p", 1.0)
    batch_size: int = sampling("batch_size", 16)
    limit: int | None = setting(None, "use the first N prompts of each set", gt=0)
    chat: bool | None = sampling("chat", None)
    seed: int = sampling("seed", 0, "and the same comparisons")
    agreement: str | None = setting(None, "preference data (chosen vs rejected, human labels) to measure the judge "
                                          "against: the DPO paper's §6.4 check, printed in the report")
    agreement_limit: int = setting(200, "pairs of the agreement data to judge", gt=0)
    output_dir: str = setting("", "where winrate.json, comparisons.jsonl, winrate.png and winrate.md go")

    def check(self) -> None:
        if not self.models:
            raise ConfigError("no model to judge: give --model PATH (repeatable)")
        if not self.prompts:
            raise ConfigError("no prompts: give --prompts FILE (repeatable)")
        if not self.temperatures or any(not t >= 0 for t in self.temperatures):
            raise ConfigError(f"temperatures must be numbers >= 0, got {self.temperatures}")
        for spec in self.models + ([self.baseline] if self.baseline_is_model else []):
            check_model_dir("models" if spec in self.models else "baseline", named(spec)[1])
        names = [named(m)[0] for m in self.models]
        if len(set(names)) < len(names):
            raise ConfigError(f"two models share a name ({', '.join(names)}): name them with name=path")
        self.judge.check()
        check_report_to("report_to", self.report_to)

    @property
    def baseline_is_model(self) -> bool:
        """A bare word (`chosen`) names a field of the prompt records; a path, hub org/name or a packaged model's
        short name names a model."""
        word = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.baseline) is not None
        return not word or self.baseline in PACKAGED or Path(self.baseline).exists()


def named(spec: str) -> tuple[str, str]:
    """(name, path) of a `name=path` spec; a bare path is named by its file name without suffixes.

    >>> named("dpo=runs/dpo"), named("data/hh_test.jsonl.gz"), named("smollm2-135m-instruct")
    (('dpo', 'runs/dpo'), ('hh_test', 'data/hh_test.jsonl.gz'), ('smollm2-135m-instruct', 'smollm2-135m-instruct'))
    """
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    base = Path(spec.rstrip("/")).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet", ".csv", ".txt", ".gguf"):
        base = base.removesuffix(suffix)
    return base or spec, spec


@dataclass(frozen=True)
class PromptSet:
    """A named prompt set: prompts and, when the baseline is a field, the baseline's response to each."""

    name: str
    source: str
    prompts: list[Prompt]
    baselines: list[str] | None


def read_prompt_set(spec: str, baseline_field: str | None, chat: bool, limit: int | None) -> PromptSet:
    """Reads one prompt set (module docstring); `baseline_field` None: the baseline is a model.

    Raises:
        DataError: the file is unreadable, or a record lacks its prompt or baseline field (file, line, field named).
    """
    name, path = named(spec)
    if path.endswith(".txt"):
        if baseline_field is not None:
            raise ConfigError(f"prompt set {path} is a .txt file, which holds no baseline responses: the baseline "
                              f"{baseline_field!r} must be a model (or use JSONL with a {baseline_field!r} field)")
        return PromptSet(name, path, read_prompts(path)[:limit], None)
    prompts: list[Prompt] = []
    baselines: list[str] = []
    with closing(read_records(path)) as records:
        for raw in records:
            prompt, baseline = _record(raw, baseline_field, chat)
            prompts.append(prompt)
            baselines.append(baseline)
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        raise DataError("no prompts", source=path)
    return PromptSet(name, path, prompts, baselines if baseline_field is not None else None)


def _record(raw: RawRecord, baseline_field: str | None, chat: bool) -> tuple[Prompt, str]:
    if raw.error is not None:
        raise DataError(raw.error, source=raw.source, line=raw.line, field=raw.field)
    record = raw.record
    try:
        if "prompt" in record:
            prompt = prompt_of(record)
            return prompt, _response(record, baseline_field) if baseline_field else ""
        return _split_dialogue(record, baseline_field or "chosen", chat, keep=baseline_field is not None)
    except BadRecord as bad:
        raise DataError(bad.reason, source=raw.source, line=raw.line, field=bad.field) from None


def _response(record: dict, key: str) -> str:
    if key not in record:
        raise BadRecord(f"missing field (the baseline {key!r}; fields here: {', '.join(record)})", key)
    value = record[key]
    if isinstance(value, list):
        replies = [m for m in messages(record, key) if m["role"] == "assistant"]
        value = replies[-1]["content"] if replies else ""
    if not isinstance(value, str) or not value.strip():
        raise BadRecord("expected a non-empty response (a string, or messages ending in an assistant reply)", key)
    return value


def _split_dialogue(record: dict, key: str, chat: bool, keep: bool) -> tuple[Prompt, str]:
    """An HH-style record: the prompt up to the last "\\n\\nAssistant:" of `key`, the response after it."""
    if key not in record:
        raise BadRecord(f"missing field: a record needs a 'prompt' or HH-style dialogues (fields here: "
                        f"{', '.join(record)})", key)
    text = record[key]
    if not isinstance(text, str):
        raise BadRecord("expected a dialogue string", key)
    end = after_last_marker(text, DEFAULT_PROMPT_MARKER, key)
    prompt: Prompt = hh_messages(text[:end]) if chat else text[:end]
    response = text[end:].strip()
    if keep and not response:
        raise BadRecord("empty response after the last Assistant turn", key)
    return prompt, response
