"""Loading policies and tokenizers through the real `from_pretrained` paths, safely by default.

Weights load from safetensors only (pickle checkpoints can run code when loaded) unless `allow_pickle` is set, and
`trust_remote_code` stays off unless the user asks for it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from dpokit.config import LoraConfig, ModelConfig
from dpokit.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Weight files that are pickles (torch.save): loading one can run arbitrary code.
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenizer '{name_or_path}': {err}") from None
    if tokenizer.pad_token is None:  # padding positions are masked everywhere; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, cfg: ModelConfig) -> torch.nn.Module:
    """A causal LM with dropout switched off (if asked), in the configured dtype.

    Safetensors only, unless `cfg.allow_pickle`: then safetensors are still preferred and pickle weights accepted.

    Raises:
        ConfigError: the model cannot be loaded, or a local checkpoint has only pickle weights (and no allow_pickle).
    """
    if not cfg.allow_pickle:
        _refuse_pickle_only(name_or_path)
    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=cfg.trust_remote_code)
        if cfg.disable_dropout:
            _zero_dropout(config)
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            config=config,
            dtype=DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None if cfg.allow_pickle else True,  # None: safetensors if present, else pickle
        )
    except (OSError, ValueError) as err:
        hint = " (only safetensors weights load unless model.allow_pickle=true)" if "safetensors" in str(err) else ""
        raise ConfigError(f"cannot load model '{name_or_path}': {err}{hint}") from None
    if cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def _refuse_pickle_only(name_or_path: str) -> None:
    """Says why a local pickle-only checkpoint is refused, and how to accept it, where transformers would only say
    that model.safetensors is missing. Hub names are checked by transformers (`use_safetensors=True`)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern)})
    if pickles:
        raise ConfigError(
            f"model '{name_or_path}' has only pickle weights ({', '.join(pickles[:3])}), which can run arbitrary code "
            "when loaded: convert them to safetensors, or set model.allow_pickle=true if you trust their source"
        )


def apply_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora.target_modules
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _zero_dropout(config) -> None:
    """Sets every float `*dropout*` / `*_pdrop` attribute of a transformers config to 0."""
    for key, value in list(vars(config).items()):
        if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
