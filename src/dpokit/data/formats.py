"""Turn raw record dicts into validated `Example`s, one parser per data format.

Every check that fails raises `BadRecord(reason, field)`; the loader adds the file and line and applies the
skip-or-raise policy. Keeping the reasons short and fixed ("empty response", "chosen and rejected are identical")
lets a skip report group them.

Formats:
    explicit        {"prompt": str, "chosen": str, "rejected": str}
    implicit        {"chosen": str, "rejected": str}, whole dialogues sharing a prefix (Anthropic HH)
    conversational  {"chosen": [msg], "rejected": [msg]} (+ optional "prompt": [msg]), msg = {"role", "content"}
    ranked          {"prompt": str, "responses": [str, ...]} best first, or with "scores": [number, ...]
    unpaired        {"prompt": str, "completion": str, "label": bool} (KTO)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dpokit.core.errors import ConfigError
from dpokit.data import chat
from dpokit.data.records import Example
from dpokit.data.sources import json_type, printable

FORMATS = ("auto", "explicit", "implicit", "conversational", "ranked", "unpaired")
DEFAULT_PROMPT_MARKER = "\n\nAssistant:"

MISSING = "missing field"
EMPTY = "empty or whitespace-only response"
IDENTICAL = "chosen and rejected are identical"
PROMPTS_DISAGREE = "chosen and rejected prompts disagree"


class BadRecord(Exception):
    """A record that does not fit its format; `field` names the offending key (e.g. "rejected", "responses[2]")."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


@dataclass(frozen=True)
class FormatOptions:
    """What some formats need besides the record.

    Attributes:
        prompt_marker: implicit format: the prompt ends at the last occurrence of this text in `chosen`.
        tokenizer: conversational format: renders messages with `apply_chat_template`.
    """

    prompt_marker: str = DEFAULT_PROMPT_MARKER
    tokenizer: Any = None


def detect_format(record: dict[str, Any]) -> str:
    """Names the format whose keys `record` has; used on the first readable record of an `auto` source.

    Raises:
        BadRecord: no format fits the keys.
    """
    if "chosen" in record and "rejected" in record:
        if isinstance(record["chosen"], list) or isinstance(record["rejected"], list):
            return "conversational"
        return "explicit" if "prompt" in record else "implicit"
    if "responses" in record:
        return "ranked"
    if "completion" in record and "label" in record:
        return "unpaired"
    keys = printable(", ".join(sorted(map(str, record))))[:200]
    raise BadRecord(
        f"cannot detect the format from keys [{keys}]; expected chosen+rejected (+prompt), "
        "prompt+responses (+scores), or prompt+completion+label"
    )


def require_chat_tokenizer(tokenizer: Any) -> None:
    """Fails early, once, instead of once per record, when the conversational format cannot render."""
    if tokenizer is None:
        raise ConfigError("the conversational format needs a tokenizer (to apply its chat template); none was given")
    if not chat.has_template(tokenizer):
        raise ConfigError("the conversational format needs a tokenizer with a chat template; this one has none")


def parse_record(record: dict[str, Any], format: str, *, source: str, line: int, options: FormatOptions) -> Example:
    """Validates `record` as `format` (not "auto") and returns its `Example`.

    Raises:
        BadRecord: the record does not fit the format.
    """
    return replace(_PARSERS[format](record, options), source=source, line=line)


def ranked_to_pairs(ex: Example) -> list[Example]:
    """All K(K-1)/2 (better, worse) pairs of a ranked example, ordered (0,1), (0,2), ..., (1,2), ...

    Each pair keeps the example's prompt, source and line, so a pair can be traced back to its list.
    """
    r = ex.responses
    return [
        replace(ex, responses=(r[i], r[j]), label=None) for i in range(len(r)) for j in range(i + 1, len(r))
    ]


# --- field checks --------------------------------------------------------------------------------------------------


def _unicode(value: str, field: str) -> str:
    """JSON can spell a lone surrogate ("\\ud800"); no encoder or tokenizer accepts one, so refuse it here, by field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRecord(f"invalid Unicode: lone surrogate U+{ord(value[e.start]):04X} at character {e.start + 1}",
                        field) from None
    return value


def _get(record: dict[str, Any], field: str) -> Any:
    if field not in record:
        raise BadRecord(MISSING, field)
    return record[field]


def _present(record: dict[str, Any], field: str) -> bool:
    """For optional fields: null or an empty string counts as absent, as columnar sources (Parquet, CSV,
    datasets) fill a column that only some records have with null or an empty cell."""
    return record.get(field) not in (None, "")


def _text(record: dict[str, Any], field: str) -> str:
    """A string field; may be empty (a prompt can legitimately be empty)."""
    value = _get(record, field)
    if not isinstance(value, str):
        raise BadRecord(f"expected a string, got {json_type(value)}", field)
    return _unicode(value, field)


def _response(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"expected a string, got {json_type(value)}", field)
    if not value.strip():
        raise BadRecord(EMPTY, field)
    return _unicode(value, field)


def _distinct_pair(chosen: str, rejected: str) -> tuple[str, str]:
    if chosen == rejected:
        raise BadRecord(IDENTICAL, "rejected")
    return chosen, rejected


# --- explicit, implicit, unpaired ----------------------------------------------------------------------------------


def _explicit(record: dict[str, Any], options: FormatOptions) -> Example:
    prompt = _text(record, "prompt")
    chosen = _response(_get(record, "chosen"), "chosen")
    rejected = _response(_get(record, "rejected"), "rejected")
    return Example(prompt=prompt, responses=_distinct_pair(chosen, rejected))


def _implicit(record: dict[str, Any], options: FormatOptions) -> Example:
    """Splits two whole dialogues at the last prompt marker; the prefixes up to it must be identical."""
    chosen = _text(record, "chosen")
    rejected = _text(record, "rejected")
    cut_chosen = after_last_marker(chosen, options.prompt_marker, "chosen")
    cut_rejected = after_last_marker(rejected, options.prompt_marker, "rejected")
    prompt = chosen[:cut_chosen]
    if rejected[:cut_rejected] != prompt:
        raise BadRecord(PROMPTS_DISAGREE, "rejected")
    chosen_reply = _response(chosen[cut_chosen:], "chosen")
    rejected_reply = _response(rejected[cut_rejected:], "rejected")
    return Example(prompt=prompt, responses=_distinct_pair(chosen_reply, rejected_reply))


def after_last_marker(text: str, marker: str, field: str) -> int:
    """Where the prompt ends in a whole dialogue: just after the last `marker` (implicit format, win-rate prompts)."""
    at = text.rfind(marker)
    if at < 0:
        raise BadRecord(f"prompt marker {marker!r} not found", field)
    return at + len(marker)


def _unpaired(record: dict[str, Any], options: FormatOptions) -> Example:
    prompt = _text(record, "prompt")
    completion = _response(_get(record, "completion"), "completion")
    label = _get(record, "label")
    if not isinstance(label, bool):
        raise BadRecord(f"expected true or false, got {json_type(label)}", "label")
    return Example(prompt=prompt, responses=(completion,), label=label)


# --- ranked --------------------------------------------------------------------------------------------------------


def _ranked(record: dict[str, Any], options: FormatOptions) -> Example:
    """A list best first, or any order with scores (higher is better; ties keep their listed order)."""
    prompt = _text(record, "prompt")
    values = _get(record, "responses")
    if not isinstance(values, list):
        raise BadRecord(f"expected a list of strings, got {json_type(values)}", "responses")
    if len(values) < 2:
        raise BadRecord(f"a ranked list needs at least 2 responses, got {len(values)}", "responses")
    responses = [_response(v, f"responses[{i}]") for i, v in enumerate(values)]
    first_seen: dict[str, int] = {}
    for i, text in enumerate(responses):
        if text in first_seen:
            raise BadRecord(f"duplicate response (same as responses[{first_seen[text]}])", f"responses[{i}]")
        first_seen[text] = i
    if _present(record, "scores"):
        scores = _scores(record["scores"], len(responses))
        order = sorted(range(len(responses)), key=lambda i: -scores[i])  # sorted() is stable: ties keep order
        responses = [responses[i] for i in order]
    return Example(prompt=prompt, responses=tuple(responses))


def _scores(values: Any, n: int) -> list[float]:
    if not isinstance(values, list):
        raise BadRecord(f"expected a list of numbers, got {json_type(values)}", "scores")
    if len(values) != n:
        raise BadRecord(f"scores has {len(values)} entries but responses has {n}", "scores")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise BadRecord(f"expected a number, got {json_type(v)}", f"scores[{i}]")
        if not math.isfinite(v):
            raise BadRecord(f"expected a finite number, got {v}", f"scores[{i}]")
    return values


# --- conversational ------------------------------------------------------------------------------------------------


def _conversational(record: dict[str, Any], options: FormatOptions) -> Example:
    """Renders messages with the tokenizer's chat template; each response is its rendering after the prompt's.

    Without a "prompt" key the prompt is every message before the last assistant message, shared by both sides.
    """
    require_chat_tokenizer(options.tokenizer)
    chosen = messages(record, "chosen")
    rejected = messages(record, "rejected")
    if _present(record, "prompt"):
        prompt = messages(record, "prompt")
    else:
        prompt, chosen = _split_last_assistant(chosen, "chosen")
        rejected_prompt, rejected = _split_last_assistant(rejected, "rejected")
        if rejected_prompt != prompt:
            raise BadRecord(PROMPTS_DISAGREE, "rejected")
    for field, reply in (("chosen", chosen), ("rejected", rejected)):
        if not any(m["content"].strip() for m in reply):
            raise BadRecord(EMPTY, field)
    tokenizer = options.tokenizer
    try:
        prompt_text = chat.render(tokenizer, prompt, add_generation_prompt=True)
    except chat.TemplateError as e:
        raise BadRecord(str(e), "prompt") from e
    chosen_text = _render_reply(tokenizer, prompt, prompt_text, chosen, "chosen")
    rejected_text = _render_reply(tokenizer, prompt, prompt_text, rejected, "rejected")
    return Example(prompt=prompt_text, responses=_distinct_pair(chosen_text, rejected_text))


def messages(record: dict[str, Any], field: str) -> list[dict[str, Any]]:
    """`record[field]` as a non-empty list of {role, content} messages, or BadRecord naming the message."""
    value = _get(record, field)
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else json_type(value)
        raise BadRecord(f"expected a non-empty list of {{role, content}} messages, got {got}", field)
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRecord(f"expected a message object, got {json_type(m)}", f"{field}[{i}]")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise BadRecord(f"message {key!r} must be a string, got {json_type(m.get(key))}", f"{field}[{i}]")
            _unicode(m[key], f"{field}[{i}]")
    return value


def _split_last_assistant(messages: list[dict[str, Any]], field: str) -> tuple[list, list]:
    """(messages before the last assistant message, the rest)."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
    if last is None:
        raise BadRecord("no assistant message", field)
    if last == 0:
        raise BadRecord("no prompt messages before the last assistant message", field)
    return messages[:last], messages[last:]


def _render_reply(tokenizer: Any, prompt: list, prompt_text: str, reply: list, field: str) -> str:
    try:
        return chat.render_reply(tokenizer, prompt, prompt_text, reply)
    except chat.TemplateError as e:
        raise BadRecord(str(e), field) from e


_PARSERS: dict[str, Callable[[dict[str, Any], FormatOptions], Example]] = {
    "explicit": _explicit,
    "implicit": _implicit,
    "conversational": _conversational,
    "ranked": _ranked,
    "unpaired": _unpaired,
}
