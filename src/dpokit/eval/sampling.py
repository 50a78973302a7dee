"""Sampling completions from a causal LM: batched, left-padded, KV-cached `generate`, seeded, and exactly the
model's distribution when asked (temperature 1, no top-k / top-p), which the KL estimate in `kl.py` relies on.

Prompts are tokenized by the one prompt encoder training uses (`data.tokenize.encode_prompts`): without special
tokens except a bos the tokenizer itself prepends, and with trailing spaces left for the completion to write. So the
model continues a prompt from the same token ids it was trained on, and `prompt + completion` text is the training
text again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from dpokit.data.tokenize import encode_prompts
from dpokit.errors import ConfigError


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn.

    Attributes:
        max_new_tokens: completion budget; a completion that reaches it has no eos.
        temperature: 1.0 samples the model's own distribution; 0 means greedy decoding.
        top_p: nucleus sampling mass; 1.0 keeps the whole distribution.
        batch_size: prompts per `generate` call.
    """

    max_new_tokens: int = 24
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 128

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Samples:
    """Completions of a list of prompts, as text and as the token ids that were sampled.

    Attributes:
        prompts: the prompt texts, one entry per completion (a prompt sampled k times appears k times).
        completions: decoded completions, special tokens removed.
        prompt_ids: each prompt's token ids, unpadded.
        completion_ids: each completion's sampled ids up to and including the first eos (none if it ran out of
            budget). These, not a re-tokenization of the text, are what the KL estimate scores.
        eos_id: the tokenizer's eos id.
    """

    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    eos_id: int | None = None

    @property
    def finished(self) -> list[bool]:
        """True where the completion ended with eos within the budget."""
        return [self.eos_id is not None and ids[-1:] == [self.eos_id] for ids in self.completion_ids]


def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    settings: SamplingSettings,
    seed: int = 0,
    num_samples: int = 1,
    progress: bool = False,
) -> Samples:
    """Samples `num_samples` completions of each prompt, in prompt order (all of prompt 0's first).

    The same model, prompts, settings and seed give the same completions: evaluations at different training steps
    share their random numbers, so differences between them come from the model, not the draw. The global torch RNG
    is left as it was.
    """
    settings.check()
    encoded = encode_prompts(tokenizer, prompts)
    repeated = [i for i in range(len(prompts)) for _ in range(num_samples)]
    prompt_ids = [encoded[i] for i in repeated]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    completion_ids = sample_ids(model, prompt_ids, settings, eos, pad, seed, progress)
    texts = tokenizer.batch_decode(
        [[t for t in ids if t != eos] for ids in completion_ids],
        skip_special_tokens=True, clean_up_tokenization_spaces=False,
    )
    return Samples([prompts[i] for i in repeated], texts, prompt_ids, completion_ids, eos_id=eos)


@torch.no_grad()
def sample_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    settings: SamplingSettings,
    eos_id: int,
    pad_id: int | None,
    seed: int = 0,
    progress: bool = False,
) -> list[list[int]]:
    """Token-level sampling: completion ids of each prompt, cut after the first eos.

    Args:
        model: a causal LM with `generate` (eval mode is set here and restored after).
        prompt_ids: N unpadded prompts; they are left-padded per batch so every row's last token is a real one.
        settings: budget and sampling distribution.
        eos_id: ends a completion.
        pad_id: fills padding (the eos id if None).
        seed: seeds the draw; the global RNG state is restored afterwards.

    Returns:
        N lists of sampled ids, each of length <= `settings.max_new_tokens`.
    """
    pad_id = eos_id if pad_id is None else pad_id
    device = next(model.parameters()).device
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), _clean_generation_config(model):
            torch.manual_seed(seed)
            batches = list(_chunks(list(prompt_ids), settings.batch_size))
            for batch in tqdm(batches, desc="sample", disable=not progress, leave=False):
                input_ids, attention_mask = left_pad(batch, pad_id)
                generated = model.generate(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                    generation_config=_generation_config(settings, eos_id, pad_id),
                )
                out.extend(_cut_at_eos(row, eos_id) for row in generated[:, input_ids.shape[1]:].tolist())
    finally:
        model.train(was_training)
    return out


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (N, T) long, each row right-aligned so generation continues its last token.

    >>> ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row))
            mask[i, width - len(row):] = 1
    return ids, mask


def _generation_config(settings: SamplingSettings, eos_id: int, pad_id: int) -> GenerationConfig:
    """Every knob that changes the sampling distribution set explicitly (top_k=0: transformers' default is 50)."""
    greedy = settings.temperature == 0
    return GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else settings.temperature,
        top_p=None if greedy else settings.top_p, top_k=None if greedy else 0, max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=eos_id, pad_token_id=pad_id,
        use_cache=True,
    )


@contextlib.contextmanager
def _clean_generation_config(model: torch.nn.Module) -> Iterator[None]:
    """`generate` fills unset options from the checkpoint's generation_config.json (top_k, repetition penalty,
    suppressed tokens...). Swap in a blank one for the call so only the settings above shape the distribution."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def _cut_at_eos(row: list[int], eos_id: int) -> list[int]:
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
