"""Loading policies and tokenizers through the real `from_pretrained` paths, safely by default.

Weights load from safetensors only (pickle checkpoints can run code when loaded) unless `allow_pickle` is set, and
`trust_remote_code` stays off unless the user asks for it. A GGUF file is no pickle: it loads, its weights unpacked into
the configured dtype, as a plain model that trains and saves as safetensors. Every way of naming a model (directory,
hub name, `.gguf` path, directory + gguf_file, packaged short name) is resolved by `model_source.resolve_model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from dpokit.core.errors import ConfigError
from dpokit.core.model_source import ModelSource, resolve_model
from dpokit.core.progress import transient
from dpokit.core.sections import LoraConfig, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Weight files that are pickles (torch.save): loading one can run arbitrary code.
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# What sits on the transformer: the LM head, or a scalar reward head (the architecture's sequence-classification
# class with one output, as `AutoModelForSequenceClassification.from_pretrained` loads it back): class, config keys.
HEADS = {"causal-lm": (AutoModelForCausalLM, {}), "reward": (AutoModelForSequenceClassification, {"num_labels": 1})}
# `train.attention` -> transformers' attn_implementation (None: its default, SDPA), how packed rows' masks are passed.
ATTENTION = {"dense": None, "flex": "flex_attention"}


def default_device() -> torch.device:
    """Where dpokit puts a model it loads to run: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False,
                   gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a model named any way `resolve_model` takes, with a pad token (eos if it has none).

    `gguf_file` (a `.gguf` file in the directory or hub repo `name_or_path`) reads the tokenizer from that file.

    Raises:
        ConfigError: the name does not resolve, or the tokenizer cannot be loaded.
    """
    source = resolve_model(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load tokenizer '{source}': {err}") from None
    if tokenizer.pad_token is None:  # padding positions are masked everywhere; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_of(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer a `model.*` section names: `tokenizer`, else that of `name_or_path` (from `gguf_file` if set)."""
    return load_tokenizer(cfg.tokenizer or cfg.name_or_path, cfg.trust_remote_code,
                          None if cfg.tokenizer else cfg.gguf_file)


def load_model(name_or_path: str, cfg: ModelConfig, gguf_file: str | None = None,
               head: str = "causal-lm", attention: str = "dense") -> torch.nn.Module:
    """A causal LM (or another `HEADS` entry) with dropout switched off (if asked), in the configured dtype.

    Safetensors only, unless `cfg.allow_pickle`: then safetensors are still preferred and pickle weights accepted.
    GGUF weights (a `.gguf` path, a packaged short name, or `name_or_path` + `gguf_file`) are unpacked into
    `cfg.dtype`, and the model carries no quantization state: it trains, and saves as safetensors, like any other.

    Args:
        name_or_path: a directory, hub name, `.gguf` path or packaged short name (`model_source.resolve_model`).
        cfg: dtype, safety and dropout settings. Its `gguf_file` is not read here: it belongs to `cfg.name_or_path`,
            and a reference named apart must not inherit it, so callers pass it for the policy's weights.
        gguf_file: a `.gguf` file inside the directory or hub repo `name_or_path`.
        head: "causal-lm", or "reward": one scalar output on the last token (a new, randomly initialised head when
            the checkpoint is a causal LM).

    Raises:
        ConfigError: the name does not resolve, the model cannot be loaded, or a local checkpoint has only pickle
            weights (and no allow_pickle).
    """
    source = resolve_model(name_or_path, gguf_file)
    if not cfg.allow_pickle and not source.gguf_file:
        _refuse_pickle_only(source.path)
    with _gguf_bar_on_terminal_only():
        model = _from_pretrained(source, cfg, head, attention)
    if source.gguf_file:
        _drop_quantization_state(model)
    if cfg.disable_dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    return model


def _from_pretrained(source: ModelSource, cfg: ModelConfig, head: str, attention: str) -> torch.nn.Module:
    auto_class, settings = HEADS[head]
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file,
                                            trust_remote_code=cfg.trust_remote_code, **settings)
        if cfg.disable_dropout:
            _zero_dropout(config)
        check_attention(auto_class, config, attention)
        return auto_class.from_pretrained(
            source.path,
            config=config,
            dtype=DTYPES[cfg.dtype],
            attn_implementation=ATTENTION[attention],
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=None if cfg.allow_pickle or source.gguf_file else True,  # None: safetensors if present
            **_gguf_kwargs(source),
        )
    except (OSError, ValueError) as err:
        hint = " (only safetensors weights load unless model.allow_pickle=true)" if "safetensors" in str(err) else ""
        raise ConfigError(f"cannot load model '{source}': {err}{hint}") from None


def check_attention(auto_class: Any, config: Any, attention: str) -> None:
    """Refuses `train.attention=flex` for a model class without FlexAttention support, from its config alone.

    A class the auto mapping does not know (remote code) is left to `from_pretrained`, whose ValueError becomes a
    ConfigError in `_from_pretrained`.
    """
    if ATTENTION[attention] is None:
        return
    model_class = auto_class._model_mapping.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_flex_attn", False):
        raise ConfigError(f"train.attention={attention}: {model_class.__name__} has no FlexAttention in transformers "
                          f"{transformers.__version__}; use train.attention=dense")


@contextlib.contextmanager
def _gguf_bar_on_terminal_only() -> Iterator[None]:
    """transformers draws its GGUF conversion bar with a plain tqdm, one redraw per tensor even into a log file;
    for the load it gets dpokit's transient bar instead (shown on a terminal only)."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    saved = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = lambda items, desc="", **_: transient(items, desc)
    try:
        yield
    finally:
        gguf_utils.tqdm = saved


def _gguf_kwargs(source: ModelSource) -> dict[str, Any]:
    """`from_pretrained` arguments for GGUF weights: the file, unpacked to dense tensors. Without `dequantize`,
    transformers >= 5 keeps quantized blocks whenever a GGUF matmul kernel is installed, and such a model cannot
    train or be saved; transformers 4.x (no `GgufConfig`) always unpacks."""
    if not source.gguf_file:
        return {}
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {"gguf_file": source.gguf_file}
    return {"gguf_file": source.gguf_file, "quantization_config": GgufConfig(dequantize=True)}


def _drop_quantization_state(model: torch.nn.Module) -> None:
    """Makes a model loaded from GGUF (its weights already dense) a plain one: `save_pretrained` refuses a model
    that still has a quantizer, and a `quantization_config` in config.json would make every later load ask for
    `gguf`. transformers does this itself when asked to dequantize; this covers versions that do not."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.is_quantized = False


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


def apply_lora(model: torch.nn.Module, lora: LoraConfig, head: str = "causal-lm") -> torch.nn.Module:
    """LoRA adapters on `lora.target_modules`; with the reward head (`head="reward"`) the one-output `score` layer
    is trained in full beside them (peft's SEQ_CLS task keeps it in `modules_to_save`)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets = lora.target_modules
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="SEQ_CLS" if head == "reward" else "CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _zero_dropout(config) -> None:
    """Sets every float `*dropout*` / `*_pdrop` attribute of a transformers config to 0."""
    for key, value in list(vars(config).items()):
        if ("dropout" in key or key.endswith("_pdrop")) and isinstance(value, float):
            setattr(config, key, 0.0)
