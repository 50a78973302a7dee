"""The one loader of a model to sample from, and the one rule for its chat template.

Every command that samples (generate, bon, winrate, ppo, the frontier and the demos) decides the same way whether
prompts go through the model's chat template: `chat=None` means "when the tokenizer has one", `chat=True` without a
template is refused before any weights load, `chat=False` samples raw text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.data.chat import has_template
from dpokit.models.loading import default_device, load_model, load_tokenizer


@dataclass
class SamplingModel:
    """A model ready to sample from: its weights on the default device, its tokenizer, and whether prompts are
    rendered with its chat template."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    chat: bool


def use_chat(tokenizer: Any, chat: bool | None, source: str, key: str = "chat") -> bool:
    """Whether prompts for `source` go through its chat template: `chat`, or when None, whether it has one.

    Raises:
        ConfigError: `chat` is true but the tokenizer has no template, naming the setting `key` and the model.
    """
    if chat and not has_template(tokenizer):
        raise ConfigError(f"{key} is true, but the tokenizer of {source} has no chat template")
    return has_template(tokenizer) if chat is None else chat


def load_for_sampling(path: str, chat: bool | None, *, name: str = "", gguf_file: str | None = None,
                      key: str = "chat") -> SamplingModel:
    """The model at `path` (any model source) and its tokenizer, the chat decision made before the weights load."""
    tokenizer = load_tokenizer(path, gguf_file=gguf_file)
    chat = use_chat(tokenizer, chat, path, key)
    model = load_model(path, ModelConfig(), gguf_file=gguf_file)
    return SamplingModel(name or path, model.to(default_device()), tokenizer, chat)
