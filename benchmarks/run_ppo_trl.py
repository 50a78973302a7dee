"""TRL side of the PPO comparison: TRL's experimental `PPOTrainer` on the PPO fixture, one JSON line out.

TRL 1.16 does not ship a PPO trainer: `trl.experimental.ppo` was deleted upstream (huggingface/trl PR #7020,
"Remove PPOTrainer"), so `from trl.experimental.ppo import PPOTrainer` raises ModuleNotFoundError. This runner imports
it from the installed TRL when present (v1.9.0, for one, ships it) and otherwise from `--trl-ppo-src DIR`: a directory
holding the four files of `trl/experimental/ppo/` (`__init__.py`, `ppo_config.py`, `ppo_trainer.py`,
`modeling_value_head.py`) from a TRL release that had them, e.g. `git -C TRL_CLONE show v1.9.0:trl/experimental/ppo/
ppo_trainer.py > DIR/ppo_trainer.py` for each. compare_trl_ppo.py does that itself (`--trl-git REPO --trl-ref REF`).
The files are loaded *as* `trl.experimental.ppo`, so their relative imports (`...trainer.utils`, `..utils`) resolve
to the installed TRL's modules: the trainer of that release running on TRL 1.16's helpers, transformers and accelerate.

Settings (ppo_measure.py's shared flags) as TRL's PPOConfig spells them: one optimizer step per minibatch needs
`per_device_train_batch_size` = the rollout batch, `gradient_accumulation_steps=1` and `num_mini_batches` = rollout /
minibatch (the trainer steps the optimizer inside `accelerator.accumulate`); `stop_token="eos"` (TRL's default, None,
generates exactly `response_length` tokens and never stops; dpokit stops at eos); `temperature=1` (default 0.7);
constant lr (default linear decay), `adamw_torch_fused` (its default, as dpokit's), bf16 off (default on),
activation checkpointing off (the trainer never turns it on anyway). The value model is TRL's separate network,
initialised from the reward model as TRL's PPO example does. `adam_steps` in the result counts the optimizer steps
actually taken.

Timing (ppo_measure.py): an iteration ends at `on_step_end`; the loop starts at `on_train_begin`; generation is
the time inside the module's `batch_generation`, and the update starts at the first `forward` with gradients on.

    python benchmarks/run_ppo_trl.py --small --iterations 2 --trl-ppo-src benchmarks/.cache/trl_ppo/v1.9.0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import ppo_fixture
from ppo_measure import IterationClock, add_shared_args, emit, result

PACKAGE = "trl.experimental.ppo"
METRICS = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg",
           "val/num_eos_tokens")


def load_trl_ppo(src: str | None):
    """TRL's PPO package: the installed one if TRL ships it, else the files in `src` loaded under its name.
    Returns (module, origin)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        return importlib.import_module(PACKAGE), "installed"
    except ModuleNotFoundError as err:
        if not src:
            raise SystemExit(f"{type(err).__name__}: {err} (TRL ships no PPO trainer; pass --trl-ppo-src)") from None
    init = Path(src) / "__init__.py"
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(Path(src))])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    spec.loader.exec_module(module)
    return module, f"source {src}"


def ppo_config(ppo, args: argparse.Namespace, output_dir: str):
    values: dict[str, object] = dict(
        output_dir=output_dir, use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        per_device_train_batch_size=args.rollout_batch_size, gradient_accumulation_steps=1,
        num_mini_batches=args.rollout_batch_size // args.minibatch_size, num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.iterations * args.rollout_batch_size,
        local_rollout_forward_batch_size=args.forward_batch_size,
        response_length=args.max_new_tokens, stop_token="eos", temperature=1.0, missing_eos_penalty=None,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        optim="adamw_torch_fused",
        kl_coef=args.kl_coef, kl_estimator="k1", cliprange=args.clip_range, cliprange_value=args.value_clip_range,
        vf_coef=args.vf_coef, gamma=args.gamma, lam=args.lam, whiten_rewards=False,
        activation_checkpointing=False, num_sample_generations=0, report_to="none", save_strategy="no",
        eval_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, push_to_hub=False,
    )
    return ppo.PPOConfig(**values), values


def instrument(ppo, clock: IterationClock):
    """Wraps the trainer module's `batch_generation` and `forward` to feed the clock; returns a callback class
    whose hooks mark the loop's start and each iteration's end and collect the logged metrics."""
    import torch
    from transformers import TrainerCallback

    trainer_module = sys.modules[f"{PACKAGE}.ppo_trainer"]
    batch_generation, forward = trainer_module.batch_generation, trainer_module.forward
    truncate_response = trainer_module.truncate_response

    def timed_generation(*a, **kw):
        begin = time.perf_counter()
        out = batch_generation(*a, **kw)
        clock.add_generation(time.perf_counter() - begin)
        return out

    def marked_forward(*a, **kw):
        if torch.is_grad_enabled():
            clock.mark_update()
        return forward(*a, **kw)

    def counted_truncation(stop_token_id, pad_token_id, responses):
        out = truncate_response(stop_token_id, pad_token_id, responses)
        Clock.response_tokens.append((len(clock.ends), int((out != pad_token_id).sum()), out.shape[0]))
        return out

    trainer_module.batch_generation, trainer_module.forward = timed_generation, marked_forward
    trainer_module.truncate_response = counted_truncation

    class Clock(TrainerCallback):
        logs: list[dict[str, float]] = []
        response_tokens: list[tuple[int, int, int]] = []  # (iteration, real response tokens, rows) per chunk

        def on_train_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end_iteration()

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    return Clock()


def run(args: argparse.Namespace) -> dict[str, object]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    fix = ppo_fixture.build(args.small)
    ppo, origin = load_trl_ppo(args.trl_ppo_src)
    clock = IterationClock()
    callback = instrument(ppo, clock)
    with tempfile.TemporaryDirectory(prefix="bench-ppo-trl-") as tmp:
        config, values = ppo_config(ppo, args, tmp)
        start = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(fix.model, padding_side="left")
        policy = AutoModelForCausalLM.from_pretrained(fix.model, dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(fix.reward_model, num_labels=1,
                                                                    dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(fix.reward_model, num_labels=1,
                                                                   dtype=torch.float32)
        with open(fix.prompts) as f:
            rows = [{"input_ids": json.loads(line)["input_ids"]} for line in f]
        trainer = ppo.PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None,
                                 reward_model=reward, value_model=value, train_dataset=Dataset.from_list(rows),
                                 callbacks=[callback])
        trainer.train()
    logs = [entry for entry in callback.logs if "objective/scores" in entry]
    per_iteration = {k: [entry.get(k) for entry in logs] for k in METRICS}
    per_iteration["response_length"] = _mean_lengths(callback.response_tokens, len(logs))
    values.pop("output_dir")
    config_out = {"ppo_config": values, "trl_ppo": origin, "torch_threads": torch.get_num_threads(),
                  "num_params": fix.num_params, "reward_params": fix.reward_params,
                  "value_params": sum(p.numel() for p in value.parameters()), "prompt_tokens": fix.prompt_tokens,
                  "adam_steps": _adam_steps(trainer.optimizer)}
    return result("trl", args, clock, (clock.loop_start or start) - start, per_iteration, config_out)


def _adam_steps(optimizer) -> int:
    """Optimizer steps taken (AdamW's step count of a trained parameter)."""
    state = getattr(optimizer, "optimizer", optimizer).state
    return int(next(iter(state.values()))["step"]) if state else 0


def _mean_lengths(chunks: list[tuple[int, int, int]], iterations: int) -> list[float]:
    """Mean real response tokens per row of each iteration (stop token included, padding after it not)."""
    sums = [[0, 0] for _ in range(iterations)]
    for it, tokens, rows in chunks:
        if it < iterations:
            sums[it][0] += tokens
            sums[it][1] += rows
    return [tokens / rows if rows else 0.0 for tokens, rows in sums]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(parser)
    parser.add_argument("--trl-ppo-src", default=None,
                        help="directory with trl/experimental/ppo's files, used when the installed TRL has none")
    emit(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
