"""What every training loop of dpokit shares (DPO/SFT/rm's `trainer/loop.py` and PPO's `rlhf/ppo_trainer.py`):
clean stops on SIGTERM/SIGINT, checkpoints and exact resume, and saving the model.

    with StopSignals() as stop:             the first signal asks for a stop after the current step
        first = resume(...)                 checkpoint.py's state loaded, metrics.jsonl trimmed to match
        ... checkpoint(...)                 every `save_every` steps, and when stopped
        raise Interrupted(...)              exit code 128 + signal; the message says how to resume
    save_model(...)                         safetensors + tokenizer; a LoRA policy merged, plus its adapter
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch

from dpokit.core.errors import DpokitError
from dpokit.core.progress import say
from dpokit.losses import LossState
from dpokit.trainer import checkpoint as ckpt
from dpokit.trainer.dist import Parallel
from dpokit.trainer.launch import deepspeed_unprobed
from dpokit.trainer.metrics import trim_jsonl
from dpokit.trainer.trackers import TrackedWriter


class Interrupted(DpokitError):
    """SIGTERM/SIGINT: the current step finished and a checkpoint was written. Exit code 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Turns the first SIGTERM/SIGINT into a request to stop after the current step; a second SIGINT stops at once."""

    def __init__(self, announce: bool = True) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            say(f"signal {signum}: finishing the current step, then writing a checkpoint (Ctrl-C again to abort)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resume(out_dir: Path, checkpoint_name: str | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           extra: Any, parallel: Parallel, progress: str, loss_state: LossState | None = None) -> int:
    """Loads the checkpoint `checkpoint_name` ("latest" or a directory; None: start afresh) into the model, the
    optimizer and `extra` (the lr scheduler, PPO's KL controller), with the RNG state (and the objective's running
    statistics into `loss_state`), and trims metrics.jsonl to the lines written up to it. Starting afresh removes an
    old metrics.jsonl. Returns the step to continue from.

    Args:
        progress: the resumed position for the message, `{}` standing for the step: "step {}/100".
    """
    metrics = out_dir / "metrics.jsonl"
    if not checkpoint_name:
        if parallel.is_main:
            metrics.unlink(missing_ok=True)
        return 0
    path = ckpt.resolve(out_dir, checkpoint_name)
    state = ckpt.load_checkpoint(path, model, optimizer, extra, parallel)
    if loss_state is not None:
        loss_state.load_state_dict(state.loss_state)
    if parallel.is_main:
        trim_jsonl(metrics, state.metrics_lines)
        say(f"resumed from {path} at {progress.format(state.step)}")
    parallel.barrier()
    return state.step


def checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: Any, step: int,
               writer: TrackedWriter, keep: int, parallel: Parallel, loss_state: LossState | None = None) -> Path:
    """Every process calls this: replicated, the main one writes; sharded, each writes its part."""
    held = loss_state.state_dict() if loss_state is not None else {}
    state = ckpt.TrainState(step=step, metrics_lines=writer.lines, loss_state=held)
    return ckpt.save_checkpoint(out_dir, model, optimizer, extra, state, keep, parallel)


def save_model(policy: torch.nn.Module, tokenizer, out_dir: Path, state: dict | None = None,
               base: str | None = None) -> None:
    """safetensors weights + tokenizer. A LoRA policy is saved merged (loadable anywhere) plus its adapter.

    Args:
        state: the gathered weights of a sharded policy (its own parameters hold only this process's part).
        base: the base model as the user named it (a short name, path or hub id), for the adapter's
            `base_model_name_or_path`; None keeps what peft took from the loaded model (for GGUF weights, the
            directory the file sits in).
    """
    with deepspeed_unprobed():  # transformers would import DeepSpeed just to unwrap the model
        if hasattr(policy, "merge_and_unload"):
            if base:
                for adapter in policy.peft_config.values():
                    adapter.base_model_name_or_path = base
            # dpokit never resizes the embeddings, so peft need not look for the base's config.json to check
            policy.save_pretrained(out_dir / "adapter", save_embedding_layers=False)
            policy = policy.merge_and_unload()
        policy.save_pretrained(out_dir, safe_serialization=True, state_dict=state)
    tokenizer.save_pretrained(out_dir)
