"""What `accelerate launch` (or `torchrun`) asked for, read from the environment it sets: FSDP, a DeepSpeed ZeRO
config, and nothing of DeepSpeed loaded unless that config asks for it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from dpokit.core.errors import ConfigError


def fsdp_from_accelerate() -> bool:
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; dpokit then shards with FSDP2 itself
    (accelerate would only do so on GPUs, and the engine must be the root module either way)."""
    if not env_flag("ACCELERATE_USE_FSDP", False):
        return False
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise ConfigError("the accelerate config asks for FSDP version 1; dpokit shards with FSDP2 only: set "
                          "fsdp_version: 2 (see configs/accelerate_fsdp.yaml)")
    return True


def zero_from_accelerate() -> dict | None:
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED and the ZeRO settings (or a
    DeepSpeed JSON file); dpokit reads them and fills in batch size, accumulation and clipping from its own config."""
    if not env_flag("ACCELERATE_USE_DEEPSPEED", False):
        return None
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("the accelerate config asks for DeepSpeed, which is not installed: "
                          "pip install 'dpokit[deepspeed]'") from None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path != "none":
        try:
            config = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"DeepSpeed config {path}: {err}") from None
    else:
        zero: dict = {"stage": int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}
        for key, name in (("offload_optimizer", "OFFLOAD_OPTIMIZER_DEVICE"), ("offload_param", "OFFLOAD_PARAM_DEVICE")):
            device = os.environ.get(f"ACCELERATE_DEEPSPEED_{name}", "none")
            if device != "none":
                zero[key] = {"device": device}
        config = {"zero_optimization": zero}
    for half in ("fp16", "bf16"):
        if config.get(half, {}).get("enabled") in (True, "true"):
            raise ConfigError(f"the DeepSpeed config enables {half}: dpokit keeps fp32 weights and applies autocast "
                              "itself; remove it and set train.precision=bf16")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2, 3):
        raise ConfigError(f"DeepSpeed ZeRO stage {stage}: dpokit supports stages 1, 2 and 3 (stage 0 is plain DDP)")
    return {**config, "fp16": {"enabled": False}, "bf16": {"enabled": False}}


@contextlib.contextmanager
def deepspeed_unprobed() -> Iterator[None]:
    """While DeepSpeed is not loaded, keeps accelerate from importing it only to ask whether a model is wrapped in a
    DeepSpeedEngine.

    transformers' `save_pretrained` unwraps the model through accelerate, which imports deepspeed whenever it is
    installed (DeepSpeed then logs "Setting accelerator to CPU" and takes seconds to load) although nothing asked for
    it. Before deepspeed is imported no object can be a DeepSpeedEngine, so the answer is the same; under a DeepSpeed
    config it is already loaded and nothing changes.
    """
    from accelerate.utils import other

    if "deepspeed" in sys.modules or not hasattr(other, "is_deepspeed_available"):
        yield
        return
    probe = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = probe


def env_flag(name: str, default: bool) -> bool:
    """A true/false environment variable as accelerate writes them; unset: `default`."""
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in ("1", "true", "yes"):
        return True
    if value.strip().lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"environment variable {name}={value!r}: expected true or false")
