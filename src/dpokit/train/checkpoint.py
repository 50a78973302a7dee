"""Checkpoints that resume a run exactly: weights, optimizer, scheduler, every RNG, data position, metrics.

Layout: `<output_dir>/checkpoints/step-00000012/` holding
- `model.safetensors`: the trainable weights (all of them, or only the LoRA adapter's),
- `optimizer.pt`: optimizer + scheduler state, loaded with `torch.load(weights_only=True)` (no arbitrary unpickling),
- `rng.pt`: Python, NumPy and torch (CPU and CUDA) generator states, same loader,
- `state.json`: step, examples seen, the metrics.jsonl line count at that step.
A checkpoint is written into a temporary directory and renamed into place, so a crash mid-write never leaves a
half checkpoint that `--resume latest` would pick; the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dpokit.errors import ConfigError

PREFIX = "step-"


@dataclass
class TrainState:
    step: int  # optimizer steps completed
    metrics_lines: int  # lines of metrics.jsonl written up to and including this step


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that change during training (the whole model, or just the adapter), contiguous on CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output_dir: str | Path, model: torch.nn.Module, optimizer, scheduler, state: TrainState,
                    keep: int) -> Path:
    root = checkpoint_dir(output_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = root / f".tmp-{PREFIX}{state.step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> TrainState:
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise ConfigError(f"checkpoint {path} does not match this model (e.g. {(missing or sorted(weights))[0]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    _set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return TrainState(**json.loads((path / "state.json").read_text()))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value):
    """random.setstate needs tuples; a weights-only load may give lists back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value
