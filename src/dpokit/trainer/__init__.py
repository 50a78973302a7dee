"""Training: `dpokit train`/`sft`'s settings, the run built from them, the loop and what every loop shares.

    config.py      the `model`, `reference`, `data`, `loss`, `train` sections (`Config`)
    assembly.py    config -> data fitted to the objective, batches' layout, policy, reference
    run.py         `build_run`: everything a run needs in one place; `evaluate_policy`
    loop.py        the optimizer steps, logging, evaluation, checkpoints, clean stops
    step.py        one optimizer step: micro-batches -> backward -> clip -> step
    sync.py        TR-DPO: the frozen reference mixed toward the policy every τ steps (`reference.sync`)
    runtime.py     stop signals, checkpoint and resume, saving the model: shared with PPO
    summary.py     `RunSummary`: what a run reports at its end (summary.json)
    model_card.py  the output directory's README.md (Hugging Face model card): base, data, loss, steps, metrics
    dist.py        one `Parallel` for 1..N processes: DDP, FSDP2, DeepSpeed ZeRO
    zero.py        DeepSpeed's step and the gathering of ZeRO-3 weights, for `Parallel`
    launch.py      what torchrun / accelerate launch set, read once
    checkpoint.py  resumable checkpoints: weights, optimizer, RNG, data position, metrics; sealed, digests checked
    checkpoint_state.py  each process's optimizer and RNG state, weights-only (ZeRO partitions, FSDP shards)
    trackers.py    TensorBoard, W&B, MLflow (offline), behind one null object
    metrics.py     metrics.jsonl and the per-batch metrics
    optim.py       optimizer (fused AdamW where it can), lr schedule, the clipped step refusing a non-finite gradient
    order.py       the seeded batch order (shuffled, length-bucketed)
"""
