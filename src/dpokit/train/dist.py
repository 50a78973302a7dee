"""Data parallelism through accelerate: one code path for 1 or N processes (`accelerate launch`, `torchrun`).

Every process walks the same seeded batch stream; of each optimizer step's `world × grad_accum` micro-batches,
process r takes its own `grad_accum`. Gradients are all-reduced by the engine accelerate wraps (DDP), losses are
scaled so the all-reduced gradient is that of the mean loss over the whole global batch, and metrics are summed
across processes, so N processes compute what one process with `grad_accum × N` computes (a test checks this).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib

import torch
from accelerate import Accelerator

from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch
from dpokit.logprobs import SequenceLogps, sequence_logps


class PolicyLogps(torch.nn.Module):
    """The policy as a module whose forward returns response log-probs.

    Wrappers such as DDP hook the *forward* of the module they wrap (that is where they prepare gradient
    all-reduce); calling the inner model's backbone directly would bypass them. So the whole log-prob computation,
    packed paths included, runs inside this module's forward.
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: Batch | PackedBatch) -> SequenceLogps:
        return sequence_logps(self.model, batch, self.chunk_size)


class Parallel:
    """The process group as the loop sees it: who am I, reduce sums, sync the stop flag, skip sync on accumulation."""

    def __init__(self) -> None:
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # MULTI_CPU (gloo) needs cpu=True
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device
        self.sharded = False  # set by wrap(shard=True) with several processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, engine: PolicyLogps, shard: bool = False) -> torch.nn.Module:
        """DDP through accelerate, or with `shard` FSDP2: each transformer block, then the engine, fully sharded."""
        self.sharded = shard and self.world > 1
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            blocks = set(getattr(engine.model, "_no_split_modules", None) or [])
            for module in engine.model.modules():
                if type(module).__name__ in blocks:
                    fully_shard(module)
            fully_shard(engine)
            return engine
        return self.accelerator.prepare_model(engine) if self.world > 1 else engine

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
