"""Text examples -> token ids, with the prompt masked from the loss.

Convention: `ids(prompt) + ids(response) + [eos]`, except that a response already holding an end of turn (a
chat-rendered one closes with its template's end-of-turn token: see data/chat.py) gets no second one. The prompt and
each response are tokenized *separately* and concatenated. BPE tokenizers merge across text boundaries ("hel" + "lo"
-> "hello"), so tokenizing the joined text would move the prompt/response boundary and could give chosen and
rejected different prompt tokens. Tokenizing apart keeps the prompt's tokens identical for every response of an
example (what a shared-prompt forward needs) and makes the loss mask exact. One deliberate adjustment: trailing
spaces of the prompt are moved to the start of the response, so "Assistant: " + "Hi" is tokenized as "Assistant:" +
" Hi", the way the model would write it. An empty prompt becomes [eos] (a document boundary), so the response's
first token is scored too.

Truncation, when prompt + longest response exceeds `max_length`: first the prompt is cut to `max_prompt_length`
(default max_length // 2; keeping its end, as dialogue data needs, or its start; or never, with `none`); then
responses are cut to the room left (their eos is lost).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from dpokit.core.errors import DataError
from dpokit.core.progress import transient
from dpokit.data import SKIP_HINT, Skip, chat
from dpokit.data.records import Example


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example. `index` is its position in the dataset (the reference cache is keyed by it)."""

    index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[tuple[int, ...], ...]  # preference order, best first; each ends with eos unless truncated
    label: bool | None = None
    where: str = ""

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) * len(self.response_ids) + sum(len(r) for r in self.response_ids)


@dataclass(frozen=True)
class TokenizeSettings:
    max_length: int = 512
    max_prompt_length: int | None = None  # None: max_length // 2
    prompt_truncation: str = "keep_end"  # keep_end | keep_start | none (a prompt leaving no room is a bad record)
    on_bad_record: str = "error"  # error | skip


class Fitted(NamedTuple):
    """One example cut to `max_length`: the tokenized example, or why it was skipped, and what was cut."""

    example: TokenizedExample | None
    skip: Skip | None = None
    prompt_cut: bool = False
    responses_cut: bool = False
    identical: bool = False  # responses became equal: no preference signal left


@dataclass
class TokenizeResult:
    examples: Sequence[TokenizedExample]
    skipped: list[Skip] = field(default_factory=list)
    prompts_truncated: int = 0
    responses_truncated: int = 0
    identical_after_truncation: int = 0  # pairs whose responses became equal: they carry no preference signal

    def add(self, fitted: Fitted) -> None:
        """Counts what `fit_length` did; keeps the example, or its skip."""
        self.prompts_truncated += fitted.prompt_cut
        self.responses_truncated += fitted.responses_cut
        self.identical_after_truncation += fitted.identical
        if fitted.example is not None:
            self.examples.append(fitted.example)
        else:
            self.skipped.append(fitted.skip)

    def report(self) -> str:
        parts = [f"tokenized {len(self.examples):,} examples"]
        parts.append(f"prompts truncated: {self.prompts_truncated:,}")
        parts.append(f"examples with responses truncated: {self.responses_truncated:,}")
        if self.identical_after_truncation:
            parts.append(f"responses identical after truncation: {self.identical_after_truncation:,}")
        if self.skipped:
            reasons = Counter(s.reason for s in self.skipped)
            parts.append("skipped " + ", ".join(f"{n} × {r}" for r, n in reasons.items()))
        return "; ".join(parts)


def tokenize_examples(
    examples: list[Example], tokenizer, settings: TokenizeSettings, progress: bool = False
) -> TokenizeResult:
    """Tokenizes and truncates every example; bad ones raise or are skipped according to `settings.on_bad_record`."""
    result = TokenizeResult(examples=[])
    encoded = encode_examples(examples, tokenizer)
    for i, (ex, (prompt, resps)) in enumerate(zip(transient(examples, "tokenize", progress), encoded, strict=True)):
        result.add(fit_length(ex, i, prompt, resps, settings))
    return result


def encode_examples(examples: Sequence[Example], tokenizer) -> list[tuple[list[int], list[list[int]]]]:
    """Each example's prompt ids and response ids (each closed by one end of turn), not yet cut to length."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; set one (tokenizer.eos_token) before training")
    prompt_ids = encode_prompts(tokenizer, [ex.prompt for ex in examples])
    closers = {eos, chat.end_of_turn_id(tokenizer)} - {None}
    # the spaces `encode_prompts` strips off a prompt's end start each of its responses instead
    responses = [ex.prompt[len(ex.prompt.rstrip(" ")):] + r for ex in examples for r in ex.responses]
    response_ids = iter(_encode(tokenizer, responses))
    return [(prompt, [_close(next(response_ids), eos, closers) for _ in ex.responses])
            for prompt, ex in zip(prompt_ids, examples, strict=True)]


def _close(response: list[int], eos: int, closers: set[int]) -> list[int]:
    """The response with eos appended, unless it already ends its turn (a chat template's end-of-turn token or eos
    is in it): one end of turn, never two."""
    return response if closers.intersection(response) else [*response, eos]


def fit_length(ex: Example, index: int, prompt: list[int], resps: list[list[int]], s: TokenizeSettings) -> Fitted:
    """Cuts one example's ids to `s.max_length` (see the module docstring); a prompt leaving no room raises
    DataError under on_bad_record=error, else is skipped."""
    longest = max(len(r) for r in resps)
    keep = s.max_prompt_length or s.max_length // 2
    prompt_cut = len(prompt) + longest > s.max_length and s.prompt_truncation != "none" and len(prompt) > keep
    if prompt_cut:
        prompt = prompt[-keep:] if s.prompt_truncation == "keep_end" else prompt[:keep]
    room = s.max_length - len(prompt)
    if room < 1:
        reason = f"prompt has {len(prompt)} tokens, leaving no room for a response under max_length={s.max_length}"
        if s.on_bad_record == "error":
            raise DataError(reason, source=ex.source, line=ex.line, field="prompt",
                            hint="set data.prompt_truncation to keep_end or keep_start to cut prompts, or " + SKIP_HINT)
        # a fixed reason, so the report groups these skips into one count
        no_room = f"prompt leaves no room for a response under max_length={s.max_length}"
        return Fitted(None, Skip(ex.source, ex.line, "prompt", no_room), prompt_cut)
    responses_cut = identical = False
    if longest > room:
        resps = [r[:room] for r in resps]
        responses_cut = True
        identical = len(resps) > 1 and len(set(map(tuple, resps))) < len(resps)
    example = TokenizedExample(index, tuple(prompt), tuple(tuple(r) for r in resps), ex.label, ex.where)
    return Fitted(example, None, prompt_cut, responses_cut, identical)


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids exactly as training sees them; sampling and the KL measurement use this too.

    Trailing spaces are left for the response to start with; no special tokens are added except the bos the
    tokenizer's own convention puts in front of a text (once: a prompt rendered with a chat template may begin with
    it already); an empty prompt becomes [eos], a document boundary whose logits predict the first response token.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; set one (tokenizer.eos_token) before training")
    bos = _bos_prefix(tokenizer)
    rows = _encode(tokenizer, [p.rstrip(" ") for p in prompts])
    rows = [bos + row if bos and row[:1] != bos else row for row in rows]
    return [row or [eos] for row in rows]


def encode_documents(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Whole documents (held-out text for perplexity) as training sees a response to an empty prompt.

    `start + ids(text) + [eos]`: `start` is what `encode_prompts` makes of an empty prompt, [bos] when the tokenizer
    puts one in front of a text, else [eos] (a document boundary), so the text's first token is predicted too; a
    text that already begins with it (a chat template may write bos) keeps just that one. As for responses, eos is
    not appended to a text that already ends its turn (it holds eos or the chat template's end-of-turn token).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no eos token; set one (tokenizer.eos_token) before scoring text")
    start = encode_prompts(tokenizer, [""])[0]
    closers = {eos, chat.end_of_turn_id(tokenizer)} - {None}
    return [(row if row[:1] == start else start + row) for row in
            (_close(body, eos, closers) for body in _encode(tokenizer, list(texts)))]


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _bos_prefix(tokenizer) -> list[int]:
    """[bos] when the tokenizer's own convention puts one in front of a text (as Llama's does), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if probe[:1] == [bos] else []
