"""A reward model: a scalar head on the hidden state of each response's last token (Bradley–Terry, `dpokit rm`).

The model is the architecture's sequence-classification class with one output (`models.HEADS["reward"]`), so
`AutoModelForSequenceClassification.from_pretrained(dir)` loads what `dpokit rm` saves. dpokit runs its backbone
(`base_model`) itself and applies the head (`score`) only where a response ends:

- plain (`Batch`): padded `prompt + response` rows; the hidden state of each row's last real token.
- packed (`PackedBatch`): the backbone over packed rows (each prompt once, no padding); the hidden state at each
  response's last token (`token_cols`). Same rewards and gradients as the plain path (tests check both).

The last token is the response's eos, or its chat template's end-of-turn token: the tokenization rule of training
(data/tokenize.py), so the head reads a position that has seen the prompt and the whole response.

Centring. Bradley–Terry determines rewards only up to a constant. After training, the mean reward over every training
response is stored in the saved config.json under `dpokit_reward` (`offset`, with the tokenization settings), and
dpokit's scorer (`reward_model_scores`, which `rewards.sources.load_reward(dir)` uses) returns `score(h) − offset`: its
rewards average 0 over the training data. Llama's `score` has no bias to fold the offset into, so transformers' own
forward of the saved model gives the uncentred value: subtract `model.config.dpokit_reward["offset"]`. transformers
reads the rightmost token that is not the pad token, which is dpokit's token when the ids are dpokit's (prompt and
response tokenized apart, eos appended: `tokenize_for_scoring`) and the pad token is not eos.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.data.batching import batches
from dpokit.data.chat import TemplateError, render_prompt, render_reply
from dpokit.data.collate import Batch
from dpokit.data.config import DataConfig
from dpokit.data.packing import PackedBatch
from dpokit.data.records import Example
from dpokit.data.tokenize import TokenizedExample, TokenizeSettings, tokenize_examples
from dpokit.lm.logprobs import packed_hidden_states
from dpokit.models.loading import default_device, load_model, load_tokenizer

MARKER = "dpokit_reward"  # config.json key of a dpokit reward model: {"offset", "max_length", ...}


def rewards(model: torch.nn.Module, batch: Batch | PackedBatch) -> Tensor:
    """The reward of every response in `batch`: the scalar head on the hidden state of its last token.

    Args:
        model: a sequence-classification model with one output (its backbone `base_model`, its head `score`).
        batch: B examples with K responses each, padded or packed.

    Returns:
        (B, K) float32 rewards (uncentred), differentiable.
    """
    batch = batch.to(next(model.parameters()).device)
    hidden = last_token_hidden(model, batch)  # (B*K, H)
    return classifier(model).score(hidden).float().view(batch.num_examples, batch.num_responses)


def classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The sequence-classification model itself: under LoRA, the one peft wraps (its `base_model` is the backbone,
    its `score` the head, trained in full beside the adapters)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def last_token_hidden(model: torch.nn.Module, batch: Batch | PackedBatch) -> Tensor:
    """(B*K, H) hidden state of each response's last token; row b*K + k is example b's k-th response."""
    model = classifier(model)
    backbone = model.base_model
    if isinstance(batch, PackedBatch):
        rows, cols = last_token_positions(batch)
        return packed_hidden_states(model, backbone, batch)[rows, cols]
    hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    last = batch.attention_mask.sum(-1) - 1  # rows are right-padded: the last real token ends the response
    return hidden.last_hidden_state[torch.arange(last.numel(), device=last.device), last]


def last_token_positions(batch: PackedBatch) -> tuple[Tensor, Tensor]:
    """Row and column of each response's last token in the packed rows: two (B*K,) tensors, indexed by b*K + k."""
    n = batch.num_examples * batch.num_responses
    length = torch.zeros(n, dtype=torch.long, device=batch.seq_ids.device)
    length = length.scatter_reduce(0, batch.seq_ids, batch.token_pos + 1, reduce="amax")
    is_last = batch.token_pos == length[batch.seq_ids] - 1  # exactly one token per response
    order = batch.seq_ids[is_last].argsort()
    return batch.pred_rows[is_last][order], batch.token_cols[is_last][order]


def response_lengths(batch: Batch | PackedBatch) -> Tensor:
    """(B, K) response tokens of each response (eos included)."""
    b, k = batch.num_examples, batch.num_responses
    if isinstance(batch, PackedBatch):
        return torch.bincount(batch.seq_ids, minlength=b * k).view(b, k)
    return batch.loss_mask.sum(-1).view(b, k)


def check_head(model: torch.nn.Module) -> None:
    """Refuses a model whose sequence-classification class is not a backbone plus one linear `score` output."""
    head = getattr(classifier(model), "score", None)
    head = getattr(head, "original_module", head)  # peft's copy of a head it trains in full
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ConfigError(f"{type(model).__name__} has no one-output linear `score` head on its backbone; dpokit rm "
                          "reads decoder models' sequence-classification classes (Llama, Qwen2, Mistral, Gemma, Phi, "
                          "GPT-2, GPT-NeoX, ...)")


# --- the saved model and dpokit's scorer ------------------------------------------------------------------------------


def reward_settings(offset: float, data: DataConfig) -> dict[str, Any]:
    """What `MARKER` holds: the centring offset and the tokenization that scoring must repeat."""
    return {"offset": offset, "max_length": data.max_length, "max_prompt_length": data.max_prompt_length,
            "prompt_truncation": data.prompt_truncation}


def is_reward_model(path: str | Path) -> bool:
    """True for a directory written by `dpokit rm` (its config.json holds `MARKER`)."""
    config = Path(path).expanduser() / "config.json"
    try:
        return config.is_file() and MARKER in json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def tokenize_for_scoring(tokenizer, settings: dict[str, Any], prompts: Sequence[str | list[dict]],
                         completions: Sequence[str]) -> list[TokenizedExample]:
    """(prompt, completion) pairs tokenized exactly as `dpokit rm` tokenized its training data: the prompt by the
    one prompt encoder, the completion apart, eos appended unless it ends its turn, truncated by the same settings.
    A prompt given as {role, content} messages is rendered as the conversational format renders training data: the
    prompt with the chat template's generation prompt, the completion as the assistant's reply after it.

    One difference is inherent: training cuts an over-long example by its longest response, scoring by the one
    completion it is given; a completion that fits `max_length` with its prompt gets the ids training gave it.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    examples = [Example(*_rendered(tokenizer, p, c), source="scored pair", line=i + 1)
                for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
    tokenize = TokenizeSettings(settings["max_length"], settings["max_prompt_length"], settings["prompt_truncation"])
    return tokenize_examples(examples, tokenizer, tokenize).examples


def _rendered(tokenizer, prompt: str | list[dict], completion: str) -> tuple[str, tuple[str]]:
    """(prompt text, (completion text,)): messages through the chat template, as data.formats renders them."""
    if isinstance(prompt, str):
        return prompt, (completion,)
    try:
        text = render_prompt(tokenizer, prompt)
        return text, (render_reply(tokenizer, prompt, text, [{"role": "assistant", "content": completion}]),)
    except TemplateError as err:
        raise ConfigError(f"reward model: a prompt given as messages could not be rendered: {err}") from None


def reward_model_scores(path: str, batch_size: int = 32) -> Callable[[list[str], list[str]], list[float]]:
    """The centred reward of `dpokit rm`'s model at `path`, as `fn(prompts, completions) -> scores`.

    Loaded from safetensors only, remote code off, in eval mode; scored without gradients in padded batches.
    """

    if not is_reward_model(path):
        raise ConfigError(f"{path} is not a dpokit reward model (its config.json has no '{MARKER}' entry)")
    tokenizer = load_tokenizer(path)
    model = load_model(path, ModelConfig(), head="reward").eval()
    model.to(default_device())
    settings = getattr(model.config, MARKER)

    @torch.no_grad()
    def score(prompts: list[str], completions: list[str]) -> list[float]:
        examples = tokenize_for_scoring(tokenizer, settings, prompts, completions)
        out: list[float] = []
        for batch in batches(examples, batch_size, tokenizer.pad_token_id, unpaired=False):
            out += (rewards(model, batch)[:, 0] - settings["offset"]).tolist()
        return out

    return score
