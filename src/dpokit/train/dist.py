"""Data parallelism through accelerate: one code path for 1 or N processes (`accelerate launch`, `torchrun`).

Replicated (DDP, accelerate's wrapper) by default; sharded (FSDP2 full shard) with `train.fsdp=true` or when
`accelerate launch` runs with an FSDP config; DeepSpeed ZeRO (stage 1-3; 3 shards the weights) when `accelerate
launch` runs with a DeepSpeed config. The loop and the step do not branch on which, except where a collective or a
shard changes what a process may do alone (saving, evaluating, hashing) and where DeepSpeed owns backward and step.

Every process walks the same seeded batch stream; of each optimizer step's `world × grad_accum` micro-batches,
process r takes its own `grad_accum`. Gradients are all-reduced by the engine accelerate wraps (DDP), losses are
scaled so the all-reduced gradient is that of the mean loss over the whole global batch, and metrics are summed
across processes, so N processes compute what one process with `grad_accum × N` computes (a test checks this).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from dpokit.errors import ConfigError
from dpokit.logprobs import PolicyLogps
from dpokit.reference import AdapterOff, FrozenModel, Reference
from dpokit.train.optim import clip_and_step

__all__ = ["Parallel", "PolicyLogps"]


class Parallel:
    """The process group as the loop sees it: who am I, how the policy is wrapped (DDP, FSDP2, DeepSpeed ZeRO),
    backward and step for that wrapper, reduce sums, sync the stop flag, gather sharded weights."""

    def __init__(self, fsdp: bool = False) -> None:
        zero = zero_from_accelerate()
        if zero is not None:
            # dpokit loads whole models and partitions them itself: no zero.Init inside from_pretrained
            os.environ["ACCELERATE_DEEPSPEED_ZERO3_INIT"] = "false"
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # MULTI_CPU (gloo) needs cpu=True
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.device = self.accelerator.device
        fsdp = fsdp or fsdp_from_accelerate()
        if fsdp and zero is not None:
            raise ConfigError("train.fsdp=true and a DeepSpeed accelerate config: choose one")
        self.zero = zero if self.world > 1 else None  # the DeepSpeed config dpokit completes, or None
        self.deepspeed = None  # the policy's DeepSpeed engine, once wrapped
        zero_stage = self.zero["zero_optimization"].get("stage", 0) if self.zero else 0
        self.sharded = (fsdp or zero_stage == 3) and self.world > 1
        # of accelerate's FSDP settings dpokit reads the version (above) and this one; see README
        self.reshard_after_forward = _env_flag("FSDP_RESHARD_AFTER_FORWARD", True) if self.sharded else True
        if self.sharded and fsdp:
            # every process loads the whole model, then shards it: transformers must not leave the weights of
            # processes other than the first on the meta device (accelerate's "cpu_ram_efficient_loading")
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def zero3(self) -> bool:
        """DeepSpeed with the weights partitioned: whole tensors must be gathered to read or set them."""
        return self.deepspeed is not None and self.sharded

    def wrap(self, engine: PolicyLogps, reference: Reference | None, make_optimizer: Callable,
             train_cfg) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
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
                reference.engine = self.shard(reference.engine)
            elif isinstance(reference, AdapterOff):
                reference.engine = engine
            return engine, make_optimizer(engine.model.parameters())
        wrapped = self.accelerator.prepare_model(engine) if self.world > 1 else engine
        return wrapped, make_optimizer(engine.model.parameters())

    def _deepspeed(self, engine: PolicyLogps, reference: Reference | None, make_optimizer: Callable, train_cfg):
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
        if self.sharded and isinstance(reference, FrozenModel):
            frozen = {k: v for k, v in config.items() if k != "gradient_clipping"}
            reference.engine, *_ = deepspeed.initialize(model=reference.engine, config=frozen)
        elif isinstance(reference, AdapterOff):
            reference.engine = self.deepspeed
        return self.deepspeed, optimizer

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
        if skip and self.world > 1 and not self.sharded and self.deepspeed is None:
            return self.accelerator.no_sync(engine)
        return contextlib.nullcontext()

    def full_state(self, model: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Every process's part gathered into whole tensors (a collective: all processes must call it).

        `trainable_only`: just the parameters being trained (what a checkpoint holds).
        """
        if self.zero3:
            out = _gather_zero3(model)
        else:
            out = {}
            for name, tensor in model.state_dict().items():
                full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
                out[name] = full.detach().cpu().contiguous()
        if trainable_only:
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            out = {n: t for n, t in out.items() if n in keep}
        return out

    def load_weights(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        """Whole tensors into the model's parameters; under ZeRO-3 each is gathered, set, and partitioned again."""
        params = dict(model.named_parameters())
        for name, value in weights.items():
            with _gathered(params[name], self.zero3), torch.no_grad():
                params[name].copy_(value)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """`last`: the optimizer step's last micro-batch (DeepSpeed reduces and steps at that boundary)."""
        if self.deepspeed is None:
            loss.backward()
            return
        self.deepspeed.set_gradient_accumulation_boundary(last)
        self.deepspeed.backward(loss, scale_wrt_gas=False)  # dpokit's loss is already the global-batch mean

    def clip_and_step(self, optimizer: torch.optim.Optimizer, max_norm: float | None,
                      check: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """Clips, calls `check(grad_norm)` (which raises to stop the run), steps, clears gradients.

        DeepSpeed computes the norm inside its step, so there `check` runs after the step instead of before.
        """
        if self.deepspeed is not None:
            self.deepspeed.step()
            raw = self.deepspeed.get_global_grad_norm()  # None would mean DeepSpeed did not compute one
            norm = torch.as_tensor(float("nan") if raw is None else float(raw))
            check(norm)
            return norm
        return clip_and_step(optimizer, max_norm, check)

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
        if self.deepspeed is not None and hasattr(self.deepspeed, "destroy"):
            self.deepspeed.destroy()
        self.deepspeed = None
        if self.world > 1 and torch.distributed.is_initialized():
            self.accelerator.free_memory()
            gc.collect()
            torch.distributed.destroy_process_group()

    def holdings(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[int]]:
        """Elements of parameters and of optimizer state each process holds (its own part when sharded or
        partitioned): what shows that sharding really happened. A collective with several processes."""
        inner = self.deepspeed.optimizer.optimizer if self.deepspeed is not None else optimizer
        params = sum(_held(p) for p in model.parameters())
        state = sum(_held(v) for per_param in inner.state.values() for k, v in per_param.items()
                    if k != "step" and torch.is_tensor(v))
        if self.world == 1:
            return {"parameters": [params], "optimizer_state": [state]}
        mine = torch.tensor([[params, state]], dtype=torch.int64, device=self.device)
        every = self.accelerator.gather(mine).tolist()
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


def zero_from_accelerate() -> dict | None:
    """`accelerate launch` with a DeepSpeed config sets ACCELERATE_USE_DEEPSPEED and the ZeRO settings (or a
    DeepSpeed JSON file); dpokit reads them and fills in batch size, accumulation and clipping from its own config."""
    if not _env_flag("ACCELERATE_USE_DEEPSPEED", False):
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


def _held(tensor: torch.Tensor) -> int:
    """Elements this process stores of a tensor: its shard (FSDP), its partition (ZeRO-3), or all of it."""
    if hasattr(tensor, "to_local"):
        return tensor.to_local().numel()
    if hasattr(tensor, "ds_tensor"):
        return tensor.ds_tensor.numel()
    return tensor.numel()


def _gathered(param: torch.nn.Parameter, zero3: bool):
    """A ZeRO-3 parameter whole for the block, its change kept (every process sets the same value)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=0)


def _gather_zero3(model: torch.nn.Module) -> dict[str, torch.Tensor]:
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


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in ("1", "true", "yes"):
        return True
    if value.strip().lower() in ("0", "false", "no"):
        return False
    raise ConfigError(f"environment variable {name}={value!r}: expected true or false")
