"""Data parallelism through accelerate: one code path for 1 or N processes (`accelerate launch`, `torchrun`).

Replicated (DDP, accelerate's wrapper) by default; sharded (FSDP2 full shard) with `train.fsdp=true` or when
`accelerate launch` runs with an FSDP config. The loop, the step and the checkpoint code do not branch on which,
except where a collective or a shard changes what a process may do alone (saving, evaluating, hashing).

Every process walks the same seeded batch stream; of each optimizer step's `world × grad_accum` micro-batches,
process r takes its own `grad_accum`. Gradients are all-reduced by the engine accelerate wraps (DDP), losses are
scaled so the all-reduced gradient is that of the mean loss over the whole global batch, and metrics are summed
across processes, so N processes compute what one process with `grad_accum × N` computes (a test checks this).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os

import torch
from accelerate import Accelerator

from dpokit.errors import ConfigError
from dpokit.logprobs import PolicyLogps
from dpokit.reference import AdapterOff, FrozenModel, Reference

__all__ = ["Parallel", "PolicyLogps"]


class Parallel:
    """The process group as the loop sees it: who am I, reduce sums, sync the stop flag, skip sync on accumulation."""

    def __init__(self, fsdp: bool = False) -> None:
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # MULTI_CPU (gloo) needs cpu=True
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device
        self.sharded = (fsdp or fsdp_from_accelerate()) and self.world > 1
        # of accelerate's FSDP settings dpokit reads the version (above) and this one; see README
        self.reshard_after_forward = _env_flag("FSDP_RESHARD_AFTER_FORWARD", True) if self.sharded else True
        if self.sharded:
            # every process loads the whole model, then shards it: transformers must not leave the weights of
            # processes other than the first on the meta device (accelerate's "cpu_ram_efficient_loading")
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, engine: PolicyLogps, reference: Reference | None = None) -> torch.nn.Module:
        """The policy's engine wrapped for this process group: DDP through accelerate, or sharded.

        Sharded, the reference follows: a frozen copy is sharded the same way (every process holds 1/world of it),
        and a LoRA policy's adapter-off reference computes through the sharded policy.
        """
        if self.sharded:
            self.shard(engine)
            if isinstance(reference, FrozenModel):
                reference.engine = self.shard(reference.engine)
            elif isinstance(reference, AdapterOff):
                reference.engine = engine
            return engine
        return self.accelerator.prepare_model(engine) if self.world > 1 else engine

    def shard(self, engine: PolicyLogps) -> PolicyLogps:
        """FSDP2 full shard: each transformer block (the model's `_no_split_modules`), then the engine as root."""
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(engine.model, "_no_split_modules", None) or [])
        for module in engine.model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=self.reshard_after_forward)
        fully_shard(engine, reshard_after_forward=self.reshard_after_forward)
        return engine

    def no_sync(self, engine: torch.nn.Module, skip: bool):
        """Accumulating micro-batches need no all-reduce until the last one (sharded: reduce-scatter every time)."""
        if skip and self.world > 1 and not self.sharded:
            return self.accelerator.no_sync(engine)
        return contextlib.nullcontext()

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every process's part gathered into whole tensors (a collective: all processes must call it)."""
        out = {}
        for name, tensor in model.state_dict().items():
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            out[name] = full.detach().cpu().contiguous()
        return out

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def any(self, flag: bool) -> bool:
        return bool(self.sum([float(flag)])[0]) if self.world > 1 else flag

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Tears the process group down before the interpreter exits. Left to process exit, the group outlives its
        last user (a DDP reducer holds it) and gloo's threads can abort the process at shutdown ("terminate called
        without an active exception"). The caller drops its wrapped modules first; accelerate's references go here.
        """
        if self.world > 1 and torch.distributed.is_initialized():
            self.accelerator.free_memory()
            gc.collect()
            torch.distributed.destroy_process_group()

    def replica_digests(self, model: torch.nn.Module) -> list[str]:
        """A hash of this process's trainable weights, gathered from every process: all equal iff in sync.

        Sharded weights are not replicas (each process holds its own part): no digests then.
        """
        if self.sharded:
            return []
        h = hashlib.blake2b(digest_size=8)
        for _, p in sorted(model.named_parameters()):
            if p.requires_grad:
                h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        mine = int.from_bytes(h.digest(), "little") >> 1  # fits int64
        if self.world == 1:
            return [f"{mine:016x}"]
        gathered = self.accelerator.gather(torch.tensor([mine], dtype=torch.int64, device=self.device))
        return [f"{int(v):016x}" for v in gathered.tolist()]


def fsdp_from_accelerate() -> bool:
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; dpokit then shards with FSDP2 itself
    (accelerate would only do so on GPUs, and the engine must be the root module either way)."""
    if not _env_flag("ACCELERATE_USE_FSDP", False):
        return False
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise ConfigError("the accelerate config asks for FSDP version 1; dpokit shards with FSDP2 only: set "
                          "fsdp_version: 2 (see configs/accelerate_fsdp.yaml)")
    return True


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in ("1", "true", "yes"):
        return True
    if value.strip().lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"environment variable {name}={value!r}: expected true or false")
