"""What a checkpoint holds of each process's optimizer and random state, in forms that save and load with
`torch.load(weights_only=True)`: DeepSpeed's optimizer state per fp32 partition, FSDP's sharded optimizer state as
this process's local parts (re-sharded like the parameters on load), and every RNG's state. The files and their
sealing are `trainer.checkpoint`'s."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from dpokit.core.errors import ConfigError


def partition_state(zero) -> dict:
    """The state of the torch optimizer DeepSpeed runs over this process's fp32 partitions, in partition order
    (its `state_dict()` cannot be used: DeepSpeed swaps partitions in and out of the optimizer's groups)."""
    inner = zero.optimizer.optimizer
    return {
        "groups": [{k: v for k, v in group.items() if k != "params"} for group in inner.param_groups],
        "state": [dict(inner.state.get(part, {})) for part in _fp32_partitions(zero)],
    }


def load_partition_state(zero, saved: dict) -> None:
    inner, parts = zero.optimizer.optimizer, _fp32_partitions(zero)
    if len(parts) != len(saved["state"]) or len(inner.param_groups) != len(saved["groups"]):
        raise ConfigError("the checkpoint's optimizer partitions do not match this run's (another DeepSpeed config?)")
    for group, hyper in zip(inner.param_groups, saved["groups"], strict=True):
        group.update(hyper)
    for part, state in zip(parts, saved["state"], strict=True):
        inner.state[part] = {k: v.to(part.device) if k != "step" and torch.is_tensor(v) else v
                             for k, v in state.items()}


def _fp32_partitions(zero) -> list[torch.Tensor]:
    """DeepSpeed's fp32 master partitions of this process, the tensors its torch optimizer updates."""
    if zero.zero_optimization_stage() == 3:
        return list(zero.optimizer.fp32_partitioned_groups_flat)
    return list(zero.optimizer.single_partition_of_fp32_groups)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_tensors(optimizer_state: dict) -> dict:
    """The optimizer state with every sharded tensor replaced by this process's part (plain tensors save and load
    with weights_only; the sharding is the parameters', restored by `shard_like_params`)."""
    state = {i: {k: local(v) for k, v in per_param.items()} for i, per_param in optimizer_state["state"].items()}
    return {**optimizer_state, "state": state}


def shard_like_params(optimizer_state: dict, optimizer: torch.optim.Optimizer) -> dict:
    """Saved local parts back into tensors sharded like their parameters (the optimizer's step mixes the two)."""
    ids = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    params = dict(zip(ids, [p for group in optimizer.param_groups for p in group["params"]], strict=True))
    state = {}
    for i, per_param in optimizer_state["state"].items():
        param = params[i]
        state[i] = {k: _like(v, param) if k != "step" else v for k, v in per_param.items()}
    return {**optimizer_state, "state": state}


def _like(value, param: torch.Tensor):
    if not (isinstance(param, DTensor) and isinstance(value, torch.Tensor) and value.shape == param.to_local().shape):
        return value
    return DTensor.from_local(value.to(param.device), param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate needs tuples; a weights-only load may give lists back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
