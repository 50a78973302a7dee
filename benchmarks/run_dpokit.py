"""dpokit side of the TRL comparison: N optimizer steps through `dpokit.trainer.loop.train`, one JSON line out.

Step times are dpokit's own `step_time_s` from metrics.jsonl (forward, backward, clip, optimizer step; batch
collation excluded, as the TRL runner's callback excludes it). Modes are presets of config overrides; `--set` adds
any dotted key on top, so new fast paths are benchmarked without touching this file:

    python benchmarks/run_dpokit.py --small --steps 3 --mode default
    python benchmarks/run_dpokit.py --mode precomputed --limit 256
    python benchmarks/run_dpokit.py --mode default --set model.gradient_checkpointing=true

Truncation: `--truncation matched` (default) never cuts the prompt and cuts responses to the room left, dropping
pairs whose prompt alone fills max_length: token for token what TRL 1.16 does with `truncation_mode="keep_start"`.
`--truncation native` uses dpokit's default instead (prompt cut to its last max_length // 2 tokens first).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import fixture
from measure import RunResult, add_runner_args, emit, pair_tokens, summarize

MODES: dict[str, list[str]] = {
    "default": [],  # every fast path on (packing, shared prompt, chunked LM head), frozen-copy reference
    "precomputed": ["reference.mode=precomputed"],
    # the least memory: no reference model in memory while training, activations recomputed in backward
    "lean": ["reference.mode=precomputed", "model.gradient_checkpointing=true"],
    "lora": ["model.lora.enabled=true"],
    "compiled": ["train.compile=true"],  # the default mode with each transformer block under torch.compile
    "plain": ["train.packing=false", "train.shared_prompt=false"],  # padded rows: the fast paths' reference
    "flex": ["train.attention=flex"],  # packed rows through FlexAttention block masks (CUDA only, experimental)
}
TRUNCATION = {
    "matched": ["data.prompt_truncation=none", "data.on_bad_record=skip"],
    "native": ["data.on_bad_record=skip"],
}
FIRST_BATCH_KEYS = ("loss", "logps/chosen", "logps/rejected", "rewards/margins")


def overrides(args: argparse.Namespace, fix: fixture.Fixture, workdir: Path) -> list[str]:
    """Dotted overrides, in precedence order: the shared benchmark settings, the mode preset, then `--set`."""
    base = [
        f"model.name_or_path={fix.model}",
        f"data.path={fix.pairs}", "data.format=explicit", f"data.max_length={args.max_length}",
        f"loss.beta={args.beta}", f"train.lr={args.lr}", f"train.optimizer={args.optimizer}",
        f"train.max_grad_norm={args.max_grad_norm}", f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}", f"train.seed={args.seed}", "train.shuffle=false",
        "train.save=false", "train.progress=false", "train.log_every=1", f"train.precision={args.precision}",
        f"train.output_dir={workdir / 'run'}", f"reference.cache_dir={workdir / 'ref-cache'}",
        f"model.gradient_checkpointing={'true' if args.gradient_checkpointing == 'on' else 'false'}",
    ]
    if args.limit:
        base.append(f"data.limit={args.limit}")
    if args.ref_model:
        base.append(f"reference.name_or_path={args.ref_model}")
    return base + TRUNCATION[args.truncation] + MODES[args.mode] + list(args.set)


def run(args: argparse.Namespace) -> RunResult:
    import torch

    from dpokit.core import settings as config_io
    from dpokit.trainer.config import build_config
    from dpokit.trainer.loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    fix = fixture.load(args.fixture) if args.fixture else fixture.build(args.small, args.model)
    with tempfile.TemporaryDirectory(prefix="bench-dpokit-") as tmp:
        items = overrides(args, fix, Path(tmp))
        cfg = build_config(None, config_io.parse_overrides(items))
        recorder = _record_steps()
        start = time.perf_counter()
        summary = train(cfg)
        total = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("split") == "train"]
    times = [r["step_time_s"] for r in steps]
    tokens = [round(r["tokens_per_s"] * r["step_time_s"]) for r in steps]
    first = {k: steps[0][k] for k in FIRST_BATCH_KEYS if steps[0].get(k) is not None}
    config = {"overrides": items, "torch_threads": torch.get_num_threads(), "train_pairs": summary.train_pairs}
    setup = recorder.first_begin - start if recorder.first_begin else total - sum(times)
    return summarize("dpokit", args.mode, args, times, tokens, recorder.pair_tokens, setup, first, config)


class _StepRecorder:
    first_begin: float | None = None  # when step 1 began
    pair_tokens: list[int]  # per step: tokens with each prompt counted once per pair


def _record_steps() -> _StepRecorder:
    """Wraps the loop's `train_step` to note when step 1 begins, so setup time ends where TRL's does, and to count
    each step's tokens with the prompt once per pair (from the batches it is given, whatever their layout).

    Measurement only: the wrapped function runs unchanged. If the loop stops calling a module-level `train_step`,
    nothing is recorded and setup falls back to total time minus the step times.
    """
    from dpokit.trainer import loop

    recorder = _StepRecorder()
    recorder.pair_tokens = []
    inner = getattr(loop, "train_step", None)
    if inner is None:
        return recorder

    def timed(trainee, micro_batches, *args, **kwargs):
        recorder.first_begin = recorder.first_begin or time.perf_counter()
        recorder.pair_tokens.append(sum(_pair_tokens(b) for b in micro_batches))
        return inner(trainee, micro_batches, *args, **kwargs)

    loop.train_step = timed
    return recorder


def _pair_tokens(batch) -> int:
    """Packed batches count their sequences' tokens and their response tokens (targets); plain ones carry masks."""
    if hasattr(batch, "num_sequence_tokens"):
        return pair_tokens(batch.num_sequence_tokens, batch.targets.numel(), batch.num_responses)
    return pair_tokens(int(batch.attention_mask.sum()), int(batch.loss_mask.sum()), batch.num_responses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_args(parser)
    parser.add_argument("--mode", choices=sorted(MODES), default="default")
    parser.add_argument("--truncation", choices=sorted(TRUNCATION), default="matched")
    args = parser.parse_args(argv)
    emit(run(args))


if __name__ == "__main__":
    sys.exit(main())
