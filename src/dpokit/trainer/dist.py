"""Data parallelism through accelerate: one code path for 1 or N processes (`accelerate launch`, `torchrun`).

Replicated (DDP, accelerate's wrapper) by default; sharded (FSDP2 full shard) with `train.fsdp=true` or when
`accelerate launch` runs with an FSDP config; DeepSpeed ZeRO (stage 1-3; 3 shards the weights) when `accelerate
launch` runs with a DeepSpeed config. The loop and the step do not branch on which, except where a collective or a
shard changes what a process may do alone (saving, evaluating, hashing) and where DeepSpeed owns backward and step.

Every process walks the same seeded batch stream; of each optimizer step's `world × grad_accum` micro-batches,
process r takes its own `grad_accum`. Gradients are all-reduced by the engine accelerate wraps (DDP), losses are
scaled so the all-reduced gradient is that of the mean loss over the whole global batch, and metrics are summed
across processes, so N processes compute what one process with `grad_accum × N` computes (a test checks this).

Two classes, one interface: `Single` is one process on its own (every collective a no-op, nothing from accelerate or
DeepSpeed imported or built), the default wherever a process group is asked for; `Parallel` is the group accelerate
sets up, for 1..N processes. Callers never ask whether there is a group.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dpokit.core.errors import ConfigError
from dpokit.lm.logprobs import PolicyLogps
from dpokit.lm.reference import AdapterOff, FrozenModel, Reference
from dpokit.models.compiling import transformer_blocks
from dpokit.trainer.launch import env_flag, fsdp_from_accelerate, zero_from_accelerate
from dpokit.trainer.optim import clip_and_step
from dpokit.trainer.zero import deepspeed_step, gather_zero3, gathered

__all__ = ["Parallel", "Single", "StepShape"]


@dataclass(frozen=True)
class StepShape:
    """What DeepSpeed's engine is told of one optimizer step: each process's micro-batch, the micro-batches per
    step, and the clipping norm. `train.*` (a `TrainConfig`) has these keys; PPO builds one from its minibatch."""

    batch_size: int
    grad_accum: int
    max_grad_norm: float | None


class Single:
    """The process group as the loop and the checkpoints see it, here for one process alone: who am I, how the
    policy is wrapped, backward and step, reduce sums, sync the stop flag, gather weights.

    Every collective is a no-op, backward is `loss.backward()`, the step is `optim.clip_and_step`. `Parallel`
    overrides what a group of processes does differently; nothing else implements this interface.
    """

    world, rank = 1, 0
    sharded = False  # each process holds only its part of the weights (FSDP, ZeRO-3)
    deepspeed = None  # the policy's DeepSpeed engine, once wrapped (Parallel under a DeepSpeed config)

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero3(self) -> bool:
        """DeepSpeed with the weights partitioned: whole tensors must be gathered to read or set them."""
        return self.deepspeed is not None and self.sharded

    def main_process_first(self) -> contextlib.AbstractContextManager:
        """A block the main process runs before the others (e.g. to fill a cache they then read)."""
        return contextlib.nullcontext()

    def wrap(self, engine: PolicyLogps, reference: Reference | None, make_optimizer: Callable,
             train_cfg: StepShape) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The policy's engine wrapped for this process group, and its optimizer (built at the point each backend
        needs it). One process: the engine as it is. `train_cfg` (`train.*`, or a `StepShape`) sizes DeepSpeed's
        batches."""
        return engine, make_optimizer(engine.model.parameters())

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (a reference) held the way the policy's weights are: whole here."""
        return model

    def sampling(self, engine: torch.nn.Module) -> contextlib.AbstractContextManager:
        """A block that calls the policy's inner model directly (generation) rather than `engine`'s forward; with
        sharded weights every process must run the block's forwards in step (`synced` generation)."""
        return contextlib.nullcontext()

    def no_sync(self, engine: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Accumulating micro-batches need no all-reduce until the last one; one process has none to skip."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """`last`: the optimizer step's last micro-batch (DeepSpeed reduces and steps at that boundary)."""
        loss.backward()

    def clip_and_step(self, optimizer: torch.optim.Optimizer, max_norm: float | None) -> torch.Tensor:
        """Clips and steps; a non-finite gradient norm raises `NonFiniteError` before the step. Returns the norm."""
        return clip_and_step(optimizer, max_norm)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes."""
        return values

    def any(self, flag: bool) -> bool:
        """Whether any process has `flag` set (every process gets the same answer)."""
        return bool(self.sum([float(flag)])[0])

    def gather(self, row: list[int]) -> list[list[int]]:
        """Every process's `row` of integers, in rank order."""
        return [row]

    def gather_objects(self, obj: object) -> list[object]:
        """Every process's `obj` (anything picklable that this job made itself), in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Waits until every process gets here."""

    def close(self) -> None:
        """Tears the process group down (nothing to do for one process)."""

    def full_state(self, model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Every process's part gathered into whole tensors (a collective: all processes must call it).

        `trainable_only`: just the parameters being trained (what a checkpoint holds).
        """
        out = {}
        for name, tensor in model.state_dict().items():
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            out[name] = full.detach().cpu().contiguous()
        return _trainable(model, out) if trainable_only else out

    def load_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Whole tensors into the model's parameters."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)

    def holdings(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[int]]:
        """Elements of parameters and of optimizer state each process holds (its own part when sharded or
        partitioned): what shows that sharding really happened. A collective with several processes."""
        inner = self.deepspeed.optimizer.optimizer if self.deepspeed is not None else optimizer
        params = sum(_held(p) for p in model.parameters())
        state = sum(_held(v) for per_param in inner.state.values() for k, v in per_param.items()
                    if k != "step" and torch.is_tensor(v))
        every = self.gather([params, state])
        return {"parameters": [row[0] for row in every], "optimizer_state": [row[1] for row in every]}

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
        return [f"{row[0]:016x}" for row in self.gather([mine])]


class Parallel(Single):
    """The process group accelerate sets up for 1..N processes (`torchrun`, `accelerate launch`, or none): the
    policy wrapped by DDP, FSDP2 or DeepSpeed ZeRO, backward and step for that wrapper, collectives over the group."""

    def __init__(self, fsdp: bool = False) -> None:
        from accelerate import Accelerator

        zero = zero_from_accelerate()
        if zero is not None:
            # dpokit loads whole models and partitions them itself: no zero.Init inside from_pretrained
            os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = "false"
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # MULTI_CPU (gloo) needs cpu=True
        super().__init__(self.accelerator.device)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        fsdp = fsdp or fsdp_from_accelerate()
        if fsdp and zero is not None:
            raise ConfigError("train.fsdp=true and a DeepSpeed accelerate config: choose one")
        self.zero = zero if self.world > 1 else None  # the DeepSpeed config dpokit completes, or None
        self.deepspeed = None  # the policy's DeepSpeed engine, once wrapped
        self.frozen_config: dict = {}  # its config less clipping: what a frozen model's ZeRO-3 engine gets
        zero_stage = self.zero["zero_optimization"].get("stage", 0) if self.zero else 0
        self.sharded = (fsdp or zero_stage == 3) and self.world > 1
        # of accelerate's FSDP settings dpokit reads the version (above) and this one; see README
        self.reshard_after_forward = env_flag("FSDP_RESHARD_AFTER_FORWARD", True) if self.sharded else True
        if self.sharded and fsdp:
            # every process loads the whole model, then shards it: transformers must not leave the weights of
            # processes other than the first on the meta device (accelerate's "cpu_ram_efficient_loading")
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"

    def main_process_first(self) -> contextlib.AbstractContextManager:
        return self.accelerator.main_process_first()

    def wrap(self, engine: PolicyLogps, reference: Reference | None, make_optimizer: Callable,
             train_cfg: StepShape) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The policy's engine wrapped for this process group, and its optimizer (built at the point each backend
        needs it: FSDP replaces the parameters, DeepSpeed takes the optimizer in).

        When the weights are sharded the reference follows: a frozen copy is sharded the same way (every process
        holds 1/world of it), and a LoRA policy's adapter-off reference computes through the sharded policy.
        """
        if self.zero is not None:
            return self._deepspeed(engine, reference, make_optimizer, train_cfg)
        if self.sharded:
            self.shard(engine)
            if isinstance(reference, FrozenModel):
                reference.engine = self.frozen(reference.engine)
            elif isinstance(reference, AdapterOff):
                reference.engine = engine
            return engine, make_optimizer(engine.model.parameters())
        if self.world == 1:
            return super().wrap(engine, reference, make_optimizer, train_cfg)
        return self.accelerator.prepare_model(engine), make_optimizer(engine.model.parameters())

    def _deepspeed(self, engine: PolicyLogps, reference: Reference | None, make_optimizer: Callable,
                   train_cfg: StepShape):
        """DeepSpeed's engine around dpokit's: it owns backward (gradient partitioning), clipping and the step;
        dpokit's optimizer and lr schedule run inside it. ZeRO-3 partitions a frozen-copy reference too."""
        import deepspeed

        config = {
            **self.zero,
            "train_micro_batch_size_per_gpu": train_cfg.batch_size,
            "gradient_accumulation_steps": train_cfg.grad_accum,
            "gradient_clipping": train_cfg.max_grad_norm or 0.0,
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        }
        optimizer = make_optimizer(engine.model.parameters())
        self.deepspeed, *_ = deepspeed.initialize(model=engine, optimizer=optimizer, config=config)
        self.frozen_config = {k: v for k, v in config.items() if k != "gradient_clipping"}
        if isinstance(reference, FrozenModel):
            reference.engine = self.frozen(reference.engine)
        elif isinstance(reference, AdapterOff):
            reference.engine = self.deepspeed
        return self.deepspeed, optimizer

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A frozen model (a reference) sharded like the policy: FSDP2 full shard, or under ZeRO-3 an engine without
        an optimizer (after `wrap`, whose DeepSpeed config it takes); replicated backends keep it whole."""
        if not self.sharded:
            return model
        if self.deepspeed is None:
            return self.shard(model)
        import deepspeed

        return deepspeed.initialize(model=model, config=self.frozen_config)[0]

    @contextlib.contextmanager
    def sampling(self, engine: torch.nn.Module) -> Iterator[None]:
        """Under FSDP2 the root's own weights (embeddings, final norm, LM head) are gathered for the block: the
        inner model's forwards skip the root's hooks; its blocks gather theirs in their own forwards, and ZeRO-3
        gathers every module's in its forward. The root must have run a forward before (FSDP2 takes the module
        of the first forward for its root)."""
        if not self.sharded or self.deepspeed is not None:
            yield
            return
        engine.unshard()
        try:
            yield
        finally:
            engine.reshard()

    def shard(self, engine: PolicyLogps) -> PolicyLogps:
        """FSDP2 full shard: each transformer block (the model's `_no_split_modules`), then the engine as root."""
        from torch.distributed.fsdp import fully_shard

        for block in transformer_blocks(engine.model):
            fully_shard(block, reshard_after_forward=self.reshard_after_forward)
        fully_shard(engine, reshard_after_forward=self.reshard_after_forward)
        return engine

    def no_sync(self, engine: torch.nn.Module, skip: bool) -> contextlib.AbstractContextManager:
        """Accumulating micro-batches need no all-reduce until the last one (sharded: reduce-scatter every time)."""
        if skip and self.world > 1 and not self.sharded and self.deepspeed is None:
            return self.accelerator.no_sync(engine)
        return super().no_sync(engine, skip)

    def full_state(self, model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        if not self.zero3:
            return super().full_state(model, trainable_only)
        out = gather_zero3(model)
        return _trainable(model, out) if trainable_only else out

    def load_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Whole tensors into the model's parameters; under ZeRO-3 each is gathered, set, and partitioned again."""
        params = dict(model.named_parameters())
        for name, value in weights.items():
            with gathered(params[name], self.zero3), torch.no_grad():
                params[name].copy_(value)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        if self.deepspeed is None:
            super().backward(loss, last)
            return
        self.deepspeed.set_gradient_accumulation_boundary(last)
        self.deepspeed.backward(loss, scale_wrt_gas=False)  # dpokit's loss is already the global-batch mean

    def clip_and_step(self, optimizer: torch.optim.Optimizer, max_norm: float | None) -> torch.Tensor:
        """DeepSpeed clips and steps inside its engine (see `deepspeed_step`); other wrappers as one process does."""
        if self.deepspeed is None:
            return super().clip_and_step(optimizer, max_norm)
        return deepspeed_step(self.deepspeed)

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return super().sum(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(tensor, reduction="sum").tolist()

    def gather(self, row: list[int]) -> list[list[int]]:
        if self.world == 1:
            return super().gather(row)
        mine = torch.tensor([row], dtype=torch.int64, device=self.device)
        return self.accelerator.gather(mine).tolist()

    def gather_objects(self, obj: object) -> list[object]:
        if self.world == 1:
            return super().gather_objects(obj)
        out: list[object] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Tears the process group down before the interpreter exits. Left to process exit, the group outlives its
        last user (a DDP reducer holds it) and gloo's threads can abort the process at shutdown ("terminate called
        without an active exception"). The caller drops its wrapped modules first; accelerate's references go here.
        """
        if self.deepspeed is not None and hasattr(self.deepspeed, "destroy"):
            self.deepspeed.destroy()
        self.deepspeed = None
        if self.world > 1 and torch.distributed.is_initialized():
            self.accelerator.free_memory()
            gc.collect()
            torch.distributed.destroy_process_group()


def _trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t for n, t in state.items() if n in keep}


def _held(tensor: torch.Tensor) -> int:
    """Elements this process stores of a tensor: its shard (FSDP), its partition (ZeRO-3), or all of it."""
    if hasattr(tensor, "to_local"):
        return tensor.to_local().numel()
    if hasattr(tensor, "ds_tensor"):
        return tensor.ds_tensor.numel()
    return tensor.numel()
