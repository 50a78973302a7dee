"""TRL side of the comparison: N optimizer steps of TRL 1.16's `DPOTrainer`, one JSON line out.

TRL is an optional benchmark dependency only: `pip install trl==1.16.0` (it leaves torch and transformers alone).

Settings are aligned with the dpokit runner wherever DPOConfig allows (see README.md, "What is aligned"):
CPU (`--device cuda` on a GPU), fp32 (`bf16=False`, TRL's default is bf16; `--precision bf16` sets it as dpokit's
`train.precision=bf16`: autocast over fp32 weights), constant lr with no warmup (TRL's default decays linearly),
`torch.optim.AdamW` with the fused kernel (TRL's default `adamw_torch_fused`; dpokit picks it too) / `RMSprop`,
the same gradient clipping, sequential sampling (no shuffling), gradient checkpointing per `--gradient-checkpointing`
(TRL's default is on), and `truncation_mode="keep_start"`, which cuts `prompt + response` to its first max_length
tokens and drops pairs whose prompt alone fills it; the dpokit runner reproduces exactly that.

Timing: a TrainerCallback's on_step_begin / on_step_end bracket forward, backward, clipping and the optimizer step;
the dataloader's collation happens before on_step_begin and is excluded, as in dpokit's `step_time_s`.

    python benchmarks/run_trl.py --small --steps 3 --mode default
    python benchmarks/run_trl.py --mode precompute --limit 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import fixture
from measure import RunResult, add_runner_args, emit, pair_tokens, parse_sets, summarize

MODES = ("default", "precompute", "lora", "liger")  # liger: use_liger_kernel=True (needs liger-kernel, CUDA)
FIRST_BATCH_KEYS = ("logps/chosen", "logps/rejected", "rewards/margins")


def load_pairs(path: str, limit: int | None) -> list[dict[str, str]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return rows[:limit] if limit else rows


def dpo_config(args: argparse.Namespace, output_dir: str):
    """DPOConfig with every knob the comparison controls set explicitly; `--set` may override any field."""
    from trl import DPOConfig

    values: dict[str, object] = dict(
        output_dir=output_dir, use_cpu=args.device == "cpu", bf16=args.precision == "bf16", fp16=False,
        seed=args.seed, use_liger_kernel=args.mode == "liger",
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, max_steps=args.steps,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch_fused" if args.optimizer == "adamw" else "rmsprop", max_grad_norm=args.max_grad_norm,
        beta=args.beta, loss_type=["sigmoid"], max_length=args.max_length, truncation_mode="keep_start",
        activation_checkpointing=args.gradient_checkpointing == "on",  # transformers 5 name of gradient_checkpointing
        precompute_ref_log_probs=args.mode == "precompute",
        train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_pin_memory=False,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    for key, raw in parse_sets(args.set).items():
        values[key] = _parse_value(raw)
    return DPOConfig(**values), values


def _parse_value(raw: str) -> object:
    import yaml

    return yaml.safe_load(raw)


def trainer_class():
    """DPOTrainer that records what the benchmark reads: per-step tokens and the first batch's loss and log-probs.

    The Trainer's logs average over the logging window and print 4 significant digits; reading the loss and TRL's
    metrics at the source, on the first call, keeps the parity check at full float precision.
    """
    from trl import DPOTrainer

    class BenchDPOTrainer(DPOTrainer):
        step_tokens: list[int]
        step_pair_tokens: list[int]
        first_batch: dict[str, float] | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                sequence, response = int(inputs["attention_mask"].sum()), int(inputs["completion_mask"].sum())
                self.step_tokens.append(sequence)
                self.step_pair_tokens.append(pair_tokens(sequence, response, 2))  # rows: B chosen, then B rejected
                if self.first_batch is None:
                    value = loss[0] if isinstance(loss, tuple) else loss
                    metrics = self._metrics["train"]
                    self.first_batch = {"loss": value.item(), **{k: metrics[k][-1] for k in FIRST_BATCH_KEYS}}
            return loss

    return BenchDPOTrainer


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of each optimizer step, and when the first one began (the end of setup)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.first_begin: float | None = None
            self._begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._begin = time.perf_counter()
            self.first_begin = self.first_begin or self._begin

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._begin)

    return StepTimer()


def run(args: argparse.Namespace) -> RunResult:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    fix = fixture.load(args.fixture) if args.fixture else fixture.build(args.small, args.model)
    trainer_cls, timer = trainer_class(), step_timer()  # imports trl before the clock starts, like dpokit's imports
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config, values = dpo_config(args, tmp)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(fix.model)
        model = AutoModelForCausalLM.from_pretrained(fix.model, dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(args.ref_model, dtype=torch.float32) if args.ref_model else None
        dataset = Dataset.from_list(load_pairs(fix.pairs, args.limit))
        trainer = trainer_cls(model=model, ref_model=ref, args=config, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[timer], peft_config=_peft(args.mode))
        trainer.step_tokens, trainer.step_pair_tokens = [], []
        trainer.train()
    setup = (timer.first_begin or start) - start
    values.pop("output_dir")
    config_out = {"dpo_config": values, "torch_threads": torch.get_num_threads(),
                  "train_pairs": len(trainer.train_dataset)}
    return summarize("trl", args.mode, args, timer.times, trainer.step_tokens, trainer.step_pair_tokens, setup,
                     trainer.first_batch or {}, config_out)


def _peft(mode: str):
    """LoRA as dpokit's lora mode configures it: r 16, alpha 32, no dropout, every linear layer but the LM head."""
    if mode != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_args(parser)
    parser.add_argument("--mode", choices=MODES, default="default")
    args = parser.parse_args(argv)
    emit(run(args))


if __name__ == "__main__":
    sys.exit(main())
