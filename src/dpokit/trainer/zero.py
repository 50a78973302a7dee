"""DeepSpeed ZeRO's pieces that `dist.Parallel` calls: its optimizer step and the gathering of ZeRO-3 weights.

DeepSpeed is imported inside each function: a run without a DeepSpeed config never imports it.
"""

from __future__ import annotations

import contextlib

import torch

from dpokit.trainer.optim import NonFiniteError


def deepspeed_step(engine) -> torch.Tensor:
    """DeepSpeed's step (it clips with `gradient_clipping` = train.max_grad_norm); returns its gradient norm.

    DeepSpeed computes the global norm only inside its step, over its own gradient partitions, so the norm cannot be
    checked before the step as one process does. A non-finite norm raises `NonFiniteError` saying what DeepSpeed
    did: with fp32 weights (the only kind dpokit runs) ZeRO 1-3 treat it as an overflow and skip the step (DeepSpeed
    0.19: weights untouched; the norm reads inf), which `was_step_applied()` confirms. Older DeepSpeed reports such a
    norm as -1 and may apply the step; the error then says the weights in memory are not to be trusted.
    """
    engine.step()
    raw, applied = engine.get_global_grad_norm(), engine.was_step_applied()
    norm = torch.as_tensor(float("nan") if raw is None else float(raw))
    if (bool(torch.isfinite(norm)) and norm >= 0) or (raw is None and applied):  # None: compute_grad_norm=false
        return norm
    if not applied:
        raise NonFiniteError(f"non-finite gradient norm ({float(norm)}); DeepSpeed skipped the optimizer step, so "
                             "the weights are still those of the step before")
    raise NonFiniteError(f"non-finite gradient norm ({float(norm)}), found by DeepSpeed after it had applied the "
                         "optimizer step: the weights in memory are not trustworthy; resume from the last checkpoint "
                         "(--resume)")


def gathered(param: torch.nn.Parameter, zero3: bool):
    """A ZeRO-3 parameter whole for the block, its change kept (every process sets the same value)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=0)


def gather_zero3(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole tensors of a ZeRO-3 model, one parameter at a time (tied names point at the same parameter)."""
    import deepspeed

    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for name, tensor in model.state_dict().items():
        if name in params:
            with deepspeed.zero.GatheredParameters([params[name]]):
                out[name] = params[name].detach().cpu().clone()
        else:
            out[name] = tensor.detach().cpu().clone()
    return out
