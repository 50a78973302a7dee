"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, every RNG, data position, metrics.

Layout: `<output_dir>/checkpoints/step-00000012/` holding
- `model.safetensors`: the trainable weights (all of them, or only the LoRA adapter's),
- `optimizer.pt`: optimizer + scheduler state, loaded with `torch.load(weights_only=True)` (no arbitrary unpickling),
- `rng.pt`: Python, NumPy and torch (CPU and CUDA) generator states, same loader,
- `state.json`: step, the metrics.jsonl line count at that step, `shards`, and the objective's running statistics
  (`losses.LossState`: BCO's δ; the same on every process, as they are summed over processes).
Sharded (FSDP), every process writes its own part instead: `model-rank00001.safetensors`, `optimizer-rank00001.pt`,
`rng-rank00001.pt` (`shards` = the number of processes), and a resume needs the same number of processes. DeepSpeed
ZeRO: the main process writes the whole trainable weights (gathered under ZeRO-3) to `model.safetensors`, every
process its partition of the optimizer state and its RNG (`zero_stage` records the stage). Replicated runs (one
process, DDP) write one copy from the main process (`shards` = 0), resumable with any number of processes.
A checkpoint is written into a temporary directory, its files' SHA-256 recorded in `state.json` (`files`) and flushed
to disk, then renamed into place, so a crash mid-write never leaves a half checkpoint that `--resume latest` would
pick; the newest `keep` checkpoints are kept. A write that fails (a full disk) removes the temporary directory and
stops the run with a `CheckpointError`; the checkpoints written before are untouched. Loading checks every file it
reads against its recorded digest, so a truncated or altered file is refused, by name, never loaded. With several
processes, the directory must be on a filesystem they all see.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dpokit.core.errors import ConfigError, DpokitError
from dpokit.trainer.checkpoint_state import (
    load_partition_state,
    local,
    local_tensors,
    partition_state,
    rng_state,
    set_rng_state,
    shard_like_params,
)
from dpokit.trainer.dist import Single

PREFIX = "step-"
TMP = ".tmp-"  # a checkpoint being written: `TMP + PREFIX + step`
# what writing a file can raise when the disk is full or the file cannot grow: the OS error itself, or torch's and
# safetensors' own exceptions around it
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
READ_ERRORS = (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError, ValueError, KeyError)


class CheckpointError(DpokitError):
    """A checkpoint could not be written (a full disk, a file-size limit); the earlier checkpoints are intact."""


@dataclass
class TrainState:
    step: int  # optimizer steps completed
    metrics_lines: int  # lines of metrics.jsonl written up to and including this step
    shards: int = 0  # processes that each wrote their own part (sharded training); 0: one whole copy
    zero_stage: int = 0  # DeepSpeed ZeRO stage of the run that wrote it; 0: not DeepSpeed
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of every other file, checked on load
    loss_state: dict[str, dict[str, float]] = field(default_factory=dict)  # the objective's running means (BCO's δ)


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that change during training (the whole model, or just the adapter), contiguous on CPU.

    Sharded parameters give this process's part.
    """
    return {n: local(p.detach()).cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str | Path, model: torch.nn.Module, optimizer, scheduler, state: TrainState,
                    keep: int, group: Single) -> Path:
    """Writes a checkpoint; with several processes every one of them must call this (it has barriers).

    Raises:
        CheckpointError: a file could not be written (on any process); the temporary directory is removed and the
            checkpoints already there are left as they were.
    """
    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f"{TMP}{PREFIX}{state.step:08d}"  # one name for all processes: each writes its part into it
    error = _attempt(lambda: _fresh_dir(root, tmp)) if group.is_main else None
    group.barrier()
    error = error or _attempt(lambda: _writer(group)(tmp, model, optimizer, scheduler, group))
    group.barrier()  # every process's files are written before the main one digests them and seals
    if group.is_main and error is None:
        error = _attempt(lambda: _seal(tmp, state, group))
    if group.any(error is not None):  # every process stops, with the same outcome
        full = _disk_full(root, error)  # before the partial copy goes and frees its space
        if group.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(output_dir, final, error, full)
    if group.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _sync_dir(root)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    group.barrier()
    return final


def _attempt(write: Callable[[], None]) -> BaseException | None:
    """Runs `write`; the error a failed write raised, or None."""
    try:
        write()
    except WRITE_ERRORS as err:
        return err
    return None


def _fresh_dir(root: Path, tmp: Path) -> None:
    """An empty `tmp`, and no temporary directory left by a run that was killed mid-write."""
    if root.is_dir():
        for stale in root.glob(f"{TMP}{PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)


def _seal(tmp: Path, state: TrainState, group: Single) -> None:
    """Records every file's digest in state.json, after flushing the files to disk: state.json is written last, so
    a directory without it (or without a file it lists) is no checkpoint."""
    state.shards = group.world if _per_process(group) else 0
    state.zero_stage = _zero_stage(group)
    state.files = {path.name: _digest(path, sync=True) for path in sorted(tmp.iterdir()) if path.is_file()}
    with open(tmp / "state.json", "w") as f:
        f.write(json.dumps(asdict(state)))
        f.flush()
        os.fsync(f.fileno())
    _sync_dir(tmp)


def _digest(path: Path, sync: bool = False) -> str:
    """SHA-256 of a file's bytes (read in 8 MiB blocks); `sync`: flush the file to disk first."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if sync:
            os.fsync(f.fileno())
        for block in iter(lambda: f.read(1 << 23), b""):
            sha.update(block)
    return sha.hexdigest()


def _sync_dir(path: Path) -> None:
    """Flushes a directory's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(root: Path, error: BaseException | None) -> str:
    """"the disk is full (N bytes free)" when it is: the OS said so, or under 1 MiB is left (torch's writer reports
    a full disk as "unexpected pos ..." without the OS error); else ""."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return ""
    if getattr(error, "errno", None) == errno.ENOSPC or free < 1 << 20:
        return f"the disk is full ({free:,} bytes free under {root}): "
    return ""


def _write_failed(output_dir: str | Path, final: Path, error: BaseException | None, full: str) -> CheckpointError:
    previous = list_checkpoints(output_dir)
    kept = f"the newest complete checkpoint is {previous[-1]}, as before" if previous else \
        "no earlier checkpoint exists"
    cause = f"{type(error).__name__}: {error}" if error is not None else "another process failed to write its part"
    return CheckpointError(f"could not write checkpoint {final}: {full}{cause}; the partial copy was removed and "
                           f"{kept}. Free space (or raise the limit) and continue with --resume")


def _writer(group: Single) -> Callable[..., None]:
    """What this process writes, by how the run holds its state: DeepSpeed's partitions, FSDP's shards, or replicas."""
    if group.deepspeed is not None:
        return _write_zero
    return _write_shard if group.sharded else _write_replica


def _write_replica(tmp: Path, model: torch.nn.Module, optimizer, scheduler, group: Single) -> None:
    """One process or DDP: the main process writes one whole copy, the others nothing (`shards` = 0)."""
    if group.is_main:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        _write_rest(tmp, "", optimizer.state_dict(), scheduler)


def _write_shard(tmp: Path, model: torch.nn.Module, optimizer, scheduler, group: Single) -> None:
    """FSDP: every process writes its own part of the weights and of the optimizer state."""
    suffix = _suffix(group)
    save_file(trainable_state(model), str(tmp / f"model{suffix}.safetensors"))
    _write_rest(tmp, suffix, local_tensors(optimizer.state_dict()), scheduler)


def _write_zero(tmp: Path, model: torch.nn.Module, optimizer, scheduler, group: Single) -> None:
    """DeepSpeed: the main process writes the whole trainable weights (gathered under ZeRO-3, a collective), every
    process the torch optimizer state of its own partition."""
    weights = group.full_state(model, trainable_only=True)
    if group.is_main:
        save_file(weights, str(tmp / "model.safetensors"))
    _write_rest(tmp, _suffix(group), partition_state(group.deepspeed), scheduler)


def _write_rest(tmp: Path, suffix: str, optimizer_state: dict, scheduler) -> None:
    """Optimizer + scheduler, and the RNG states, of this process."""
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / f"optimizer{suffix}.pt")
    torch.save(rng_state(), tmp / f"rng{suffix}.pt")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file())


def resolve(output_dir: str | Path, resume: str) -> Path:
    """`latest` -> the newest complete checkpoint of the run; otherwise a checkpoint directory path."""
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"train.resume=latest: no checkpoint in {checkpoint_dir(output_dir)}")
        return found[-1]
    path = Path(resume).expanduser()
    if not (path / "state.json").is_file():
        raise ConfigError(f"train.resume: {path} is not a dpokit checkpoint (no state.json)")
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler, group: Single) -> TrainState:
    """Restores what `save_checkpoint` wrote into model, optimizer, scheduler and the RNGs; returns its state.

    Raises:
        ConfigError: the checkpoint was written by another layout (replicated, sharded, ZeRO stage, process count)
            or for another model, or one of its files is missing, truncated or altered (named in the message).
    """
    state = read_state(path)
    wanted = (group.world if _per_process(group) else 0, _zero_stage(group))
    if (state.shards, state.zero_stage) != wanted:
        raise ConfigError(f"checkpoint {path} was written by {_kind(state.shards, state.zero_stage)}, but this run "
                          f"is {_kind(*wanted)}; resume {_how(state.shards, state.zero_stage)}")
    suffix, zero = _suffix(group), group.deepspeed
    weights = _read(path / ("model.safetensors" if zero is not None else f"model{suffix}.safetensors"), state,
                    lambda file: load_file(str(file)))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise ConfigError(f"checkpoint {path} does not match this model (e.g. {(missing or sorted(weights))[0]})")
    saved = _read(path / f"optimizer{suffix}.pt", state, lambda file: torch.load(file, weights_only=True))
    rng = _read(path / f"rng{suffix}.pt", state, lambda file: torch.load(file, weights_only=True))
    load = _load_zero if zero is not None else _load_local
    load(model, optimizer, weights, saved["optimizer"], group)
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(rng)
    return state


def read_state(path: Path) -> TrainState:
    """A checkpoint's state.json, refused by name when it is unreadable."""
    file = path / "state.json"
    try:
        return TrainState(**json.loads(file.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"checkpoint file {file} is damaged ({type(err).__name__}: {err}); {_elsewhere(path)}") \
            from None


def _read(file: Path, state: TrainState, load: Callable[[Path], Any]) -> Any:
    """`load(file)`, after checking the file against the digest `state` recorded when it was written (checkpoints
    from before digests were recorded have none: only their readability is checked)."""
    if state.files:
        if file.name not in state.files or not file.is_file():
            raise ConfigError(f"checkpoint file {file} is missing; {_elsewhere(file.parent)}")
        if _digest(file) != state.files[file.name]:
            raise ConfigError(f"checkpoint file {file} is damaged: its SHA-256 differs from the one recorded when it "
                              f"was written (truncated or altered), so it is not loaded; {_elsewhere(file.parent)}")
    try:
        return load(file)
    except READ_ERRORS as err:
        raise ConfigError(f"checkpoint file {file} cannot be read ({type(err).__name__}: {str(err)[:200]}); "
                          f"{_elsewhere(file.parent)}") from None


def _elsewhere(path: Path) -> str:
    """What to do about a damaged checkpoint: another one of the run, or a fresh start."""
    others = [p for p in list_checkpoints(path.parent.parent) if p != path] if path.parent.name == "checkpoints" \
        else []
    if others:
        return f"resume from another checkpoint (train.resume={others[-1]}) or start afresh"
    return "start the run afresh (no other checkpoint of it)"


def _load_zero(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict, group: Single) -> None:
    """Whole weights into the DeepSpeed model, then this process's optimizer partition."""
    group.load_weights(model, weights)
    group.deepspeed.optimizer.refresh_fp32_params()  # the fp32 partition from the weights just loaded (exact)
    load_partition_state(group.deepspeed, optimizer_state)


def _load_local(model: torch.nn.Module, optimizer, weights: dict, optimizer_state: dict, group: Single) -> None:
    """This process's weights (whole, or its FSDP shard) and optimizer state."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            local(params[name]).copy_(value)
    optimizer.load_state_dict(shard_like_params(optimizer_state, optimizer))


def _per_process(group: Single) -> bool:
    """Whether every process writes (and reads back) its own part: sharded weights or partitioned optimizer state."""
    return group.sharded or group.deepspeed is not None


def _zero_stage(group: Single) -> int:
    return group.deepspeed.zero_optimization_stage() if group.deepspeed is not None else 0


def _suffix(group: Single) -> str:
    return f"-rank{group.rank:05d}" if _per_process(group) else ""


def _kind(shards: int, zero_stage: int) -> str:
    if zero_stage:
        return f"{shards} processes under DeepSpeed ZeRO-{zero_stage}"
    return f"{shards} sharded processes" if shards else "replicated (one process or DDP)"


def _how(shards: int, zero_stage: int) -> str:
    if zero_stage:
        return f"with {shards} processes and the same DeepSpeed config (ZeRO-{zero_stage})"
    if shards:
        return f"with {shards} processes and FSDP (train.fsdp=true or the same accelerate config)"
    return "without FSDP or DeepSpeed (any number of processes)"
