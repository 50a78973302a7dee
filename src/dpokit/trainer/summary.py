"""What a training run reports at its end (`RunSummary`): the loop writes it as summary.json, the model card reads
it, `dpokit.train` returns it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunSummary:
    output_dir: str
    steps: int
    train_pairs: int
    eval_pairs: int
    final_train: dict[str, float]
    final_eval: dict[str, float] | None
    seconds: float
    notes: list[str]
    processes: int = 1
    replica_digests: list[str] | None = None  # hash of each process's weights at the end: all equal when in sync
    sharded: bool = False  # FSDP or ZeRO-3: each process held only its part of the weights
    held_per_process: dict[str, list[int]] | None = None  # elements of parameters / optimizer state per process
