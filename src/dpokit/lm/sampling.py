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
from transformers import GenerationConfig

from dpokit.core.errors import ConfigError
from dpokit.core.progress import transient
from dpokit.core.sections import SamplingSettings
from dpokit.data.chat import TemplateError, render_prompts, stop_ids
from dpokit.data.tokenize import encode_prompts


@dataclass
class Samples:
    """Completions of a list of prompts, as text and as the token ids that were sampled.

    Attributes:
        prompts: the prompts as given (text, or messages), one entry per completion (a prompt sampled k times
            appears k times).
        completions: decoded completions, special tokens removed.
        prompt_ids: each prompt's token ids, unpadded (after the chat template, when one was applied).
        completion_ids: each completion's sampled ids up to and including the first stop token (none if it ran out
            of budget). These, not a re-tokenization of the text, are what the KL estimate scores.
        stop_ids: the ids that end a completion: eos, and with a chat template its end-of-turn token.
    """

    prompts: list[str | list[dict]]
    completions: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    stop_ids: tuple[int, ...] = ()

    @property
    def finished(self) -> list[bool]:
        """True where the completion ended with a stop token within the budget."""
        return [bool(ids) and ids[-1] in self.stop_ids for ids in self.completion_ids]


def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    settings: SamplingSettings,
    seed: int = 0,
    num_samples: int = 1,
    progress: bool = False,
    chat: bool = False,
    synced: bool = False,
) -> Samples:
    """Samples `num_samples` completions of each prompt, in prompt order (all of prompt 0's first).

    The same model, prompts, settings and seed give the same completions: evaluations at different training steps
    share their random numbers, so differences between them come from the model, not the draw. The global torch RNG
    is left as it was.

    Args:
        chat: render each prompt with the tokenizer's chat template (a string is one user message; a list of
            messages is rendered as it is) and stop at the template's end-of-turn token too (data/chat.py).
        synced: every process of the group samples in step (sharded weights: each forward is a collective), so
            a process whose rows have all stopped keeps running forwards until every process's have.
    """
    settings.check()
    try:
        texts = render_prompts(tokenizer, prompts, chat)
    except TemplateError as err:
        raise ConfigError(str(err)) from None
    encoded = encode_prompts(tokenizer, texts)
    repeated = [i for i in range(len(prompts)) for _ in range(num_samples)]
    prompt_ids = [encoded[i] for i in repeated]
    stops = stop_ids(tokenizer, chat)
    completion_ids = sample_ids(model, prompt_ids, settings, stops, tokenizer.pad_token_id, seed, progress,
                                shared=num_samples, synced=synced)
    completions = tokenizer.batch_decode(
        [[t for t in ids if t not in stops] for ids in completion_ids],
        skip_special_tokens=True, clean_up_tokenization_spaces=False,
    )
    return Samples([prompts[i] for i in repeated], completions, prompt_ids, completion_ids, tuple(stops))


@torch.no_grad()
def sample_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    settings: SamplingSettings,
    stop: int | Sequence[int],
    pad_id: int | None,
    seed: int = 0,
    progress: bool = False,
    shared: int = 1,
    synced: bool = False,
) -> list[list[int]]:
    """Token-level sampling: completion ids of each prompt, cut after the first stop token.

    Args:
        model: a causal LM with `generate` (eval mode is set here and restored after).
        prompt_ids: N unpadded prompts; they are left-padded per batch so every row's last token is a real one.
        settings: budget and sampling distribution.
        stop: the id, or ids (eos and a chat template's end of turn), that end a completion.
        pad_id: fills padding (the first stop id if None).
        seed: seeds the draw; the global RNG state is restored afterwards.
        shared: the rows come in runs of `shared` copies of one prompt (what `sample` makes for `num_samples`):
            each run's prompt is prefilled once and its KV cache copied to the run's rows, so K samples cost one
            prefill instead of K. The rows, their order and each step's draw are those of the plain path.
        synced: as in `sample` (transformers' `synced_gpus`).

    Returns:
        N lists of sampled ids, each of length <= `settings.max_new_tokens`.
    """
    stops = [stop] if isinstance(stop, int) else list(stop)
    pad_id = stops[0] if pad_id is None else pad_id
    prompts = _runs(prompt_ids, shared)
    device = next(model.parameters()).device
    config = _generation_config(settings, stops, pad_id)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), _clean_generation_config(model):
            torch.manual_seed(seed)
            batches = list(_chunks(prompts, max(1, settings.batch_size // shared)))
            for batch in transient(batches, "sample", progress):
                generated, width = _generate(model, batch, shared, config, pad_id, device, synced)
                out.extend(_cut_at_stop(row, stops) for row in generated[:, width:].tolist())
    finally:
        model.train(was_training)
    return out


def _runs(prompt_ids: Sequence[Sequence[int]], shared: int) -> list[Sequence[int]]:
    """The distinct prompts of rows that come in runs of `shared` equal prompts."""
    if shared < 1 or len(prompt_ids) % shared:
        raise ValueError(f"{len(prompt_ids)} rows do not form runs of {shared}")
    firsts = [prompt_ids[i] for i in range(0, len(prompt_ids), shared)]
    if any(list(prompt_ids[i]) != list(firsts[i // shared]) for i in range(len(prompt_ids))):
        raise ValueError(f"the rows are not runs of {shared} copies of one prompt")
    return firsts


def _generate(model: torch.nn.Module, prompts: list[Sequence[int]], k: int, config: GenerationConfig, pad_id: int,
              device: torch.device, synced: bool = False) -> tuple[torch.Tensor, int]:
    """`generate` for k samples of each prompt, rows in prompt order; returns the ids and the padded prompt width.

    With k > 1 the prompts (all but their last token) go through the model once; the KV cache is repeated k times
    and `generate` continues from it, so only the last prompt token and the new ones run for each of the k rows.
    Positions follow the left padding as `generate` counts them (the attention mask's running sum). `synced`
    (transformers' `synced_gpus`) takes the plain path: the prefill's presence would depend on each process's rows."""
    input_ids, attention_mask = (x.to(device) for x in left_pad(prompts, pad_id))
    width = input_ids.shape[1]
    rows, mask = input_ids.repeat_interleave(k, 0), attention_mask.repeat_interleave(k, 0)
    run = {"input_ids": rows, "attention_mask": mask, "generation_config": config, "synced_gpus": synced}
    if k == 1 or width < 2 or synced:  # synced: every process the same forwards, whatever its prompts' widths
        return model.generate(**run), width
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                  position_ids=positions[:, :-1], use_cache=True).past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):  # a model without transformers' Cache: the plain path
        return model.generate(**run), width
    cache.batch_repeat_interleave(k)
    return model.generate(**run, past_key_values=cache), width


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


def _generation_config(settings: SamplingSettings, stops: list[int], pad_id: int) -> GenerationConfig:
    """Every knob that changes the sampling distribution set explicitly (top_k=0: transformers' default is 50)."""
    greedy = settings.temperature == 0
    return GenerationConfig(
        do_sample=not greedy, temperature=None if greedy else settings.temperature,
        top_p=None if greedy else settings.top_p, top_k=None if greedy else 0, max_new_tokens=settings.max_new_tokens,
        min_new_tokens=0, repetition_penalty=1.0, no_repeat_ngram_size=0, eos_token_id=stops, pad_token_id=pad_id,
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


def _cut_at_stop(row: list[int], stops: list[int]) -> list[int]:
    end = next((i for i, t in enumerate(row) if t in stops), None)
    return row if end is None else row[:end + 1]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
