"""Optimizer and learning-rate schedule (linear warmup, then constant or cosine decay to 0); the clipped step that
refuses a non-finite gradient."""

from __future__ import annotations

import math

import torch

from dpokit.trainer.config import TrainConfig


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `train.optimizer` names, at `train.lr` and `train.weight_decay`."""
    return optimizer_for(params, cfg.optimizer, cfg.lr, cfg.weight_decay)


def optimizer_for(params, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW or RMSprop over the parameters that require gradients.

    AdamW runs torch's fused kernel wherever every parameter allows it (floating point, on a device with fused
    kernels: CPU and CUDA among them): one pass over each tensor instead of a dozen elementwise ones, the same update
    to fp32 rounding (tests/unit/test_optim.py). RMSprop has no fused kernel and keeps torch's default.
    """
    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=_fusable(params) or None)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


def _fusable(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW takes every one of `params`."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    devices = _get_fused_kernels_supported_devices()
    return bool(params) and all(p.is_floating_point() and p.device.type in devices for p in params)


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm of a step is NaN or infinite; the message says whether the optimizer step was
    taken (it is not, except where DeepSpeed reports the norm only after stepping: see `zero.deepspeed_step`)."""


def clip_and_step(optimizer: torch.optim.Optimizer, max_norm: float | None) -> torch.Tensor:
    """Clips the gradients and steps, then clears them. Returns the gradient norm before clipping.

    Raises:
        NonFiniteError: the norm is NaN or infinite; gradients are cleared and the step is not taken.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf"))
    if hasattr(norm, "full_tensor"):  # sharded gradients give a distributed norm
        norm = norm.full_tensor()
    if not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient norm ({float(norm)}); the optimizer step was not taken")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule)
    )
