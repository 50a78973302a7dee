"""Why the no-grad reference forward looked slower than the policy's, and what running it first changes.

One packed batch of HH pairs through SmolLM2-135M-Instruct (policy in train mode, a frozen eval-mode copy as
reference, dpokit's PolicyLogps for both), timed in one process, interleaved, `--repeats` times:

- policy forward (with grad), its outputs then released;
- reference forward alone (no grad, no policy activations held);
- reference forward right after the policy's forward, with the policy's activations held (the order before);
- a whole step's forwards and backward in each order: policy first (before) and reference first (now).

The fastest of the repeats is the figure (noise only adds time); the median is printed beside it.

    .venv/bin/python benchmarks/reference_order.py --threads 1 --repeats 8    # a few minutes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from fixture import data_path

from dpokit.core.sections import ModelConfig
from dpokit.data.batching import Layout, batches
from dpokit.data.config import DataConfig
from dpokit.data.prepare import Wants, prepare
from dpokit.lm.logprobs import PolicyLogps
from dpokit.models.loading import load_model, load_tokenizer

MODEL = "smollm2-135m-instruct"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(MODEL)
    data = DataConfig(path=str(data_path()), max_length=args.max_length, on_bad_record="skip", limit=64, cache=False)
    store = prepare(data, tokenizer, Wants("sigmoid"), seed=0).train
    batch = next(batches([store[i] for i in range(args.batch_size)], args.batch_size, tokenizer.pad_token_id, False,
                         layout=Layout(True, True, args.max_length)))
    policy_model = load_model(MODEL, ModelConfig(name_or_path=MODEL)).train()
    policy, reference = PolicyLogps(policy_model), PolicyLogps(copy.deepcopy(policy_model).eval().requires_grad_(False))

    def ref() -> None:
        with torch.no_grad():
            reference(batch)

    def step(reference_first: bool) -> None:
        if reference_first:
            ref()
        out = policy(batch)
        if not reference_first:
            ref()
        out.logps.sum().backward()
        policy_model.zero_grad(set_to_none=True)

    figures: dict[str, list[float]] = {k: [] for k in ("policy forward", "reference alone",
                                                       "reference after the policy's forward", "step, policy first",
                                                       "step, reference first")}
    for _ in range(args.repeats):
        figures["policy forward"].append(timed(lambda: policy(batch)))
        figures["reference alone"].append(timed(ref))
        held = policy(batch)
        figures["reference after the policy's forward"].append(timed(ref))
        del held
        figures["step, policy first"].append(timed(lambda: step(False)))
        figures["step, reference first"].append(timed(lambda: step(True)))
    print(f"rows {tuple(batch.input_ids.shape)}, {args.threads} thread(s), {args.repeats} repeats")
    for name, values in figures.items():
        print(f"{name:38s} fastest {min(values):7.3f} s   median {statistics.median(values):7.3f} s")


if __name__ == "__main__":
    main()
