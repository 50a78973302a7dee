"""Regional compilation: `torch.compile` on each transformer block, not on the whole model.

A block's code is the same for every layer, so one compiled graph serves them all and compiling costs one block's
worth, not the model's; the embedding, LM head and dpokit's chunked log-prob code stay eager (the head runs in
chunks of varying size, which would only recompile). Packed rows change shape every batch: the first new shape
recompiles with dynamic dimensions, later ones reuse that graph.

    >>> import torch
    >>> from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer
    >>> tok = train_bpe_tokenizer(["a b c d e f g"] * 8, vocab_size=64)
    >>> compile_blocks(tiny_llama(tok, num_layers=3))
    3
"""

from __future__ import annotations

import torch

from dpokit.core.errors import ConfigError


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: modules of the classes it names in `_no_split_modules` (transformers' own
    list of what must not be split across devices, e.g. `LlamaDecoderLayer`); a peft model answers for its base."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_blocks(model: torch.nn.Module) -> int:
    """Compiles each transformer block of `model` in place (`nn.Module.compile`); returns how many.

    Raises:
        ConfigError: the model names no transformer block class (`_no_split_modules`), so there is nothing to compile
            regionally.
    """
    blocks = transformer_blocks(model)
    if not blocks:
        raise ConfigError(f"train.compile=true: {type(model).__name__} names no transformer block class "
                          "(_no_split_modules), so dpokit cannot compile it block by block; set train.compile=false")
    for block in blocks:
        block.compile()
    return len(blocks)
