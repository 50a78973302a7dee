"""K samples of a prompt with one shared prefill vs a prefill per sample, side by side in one run.

    python benchmarks/sampling_prefill.py [--prompts 8] [--k 4] [--max-new-tokens 64] [--repeats 2] [--threads N]

SmolLM2-135M-Instruct, Anthropic HH prompts through its chat template (`--min-prompt-tokens`: long ones), sampled at
temperature 1 with dpokit's sampler three ways, each `--repeats` times, alternating:
- `generate(num_return_sequences=K)`: transformers' own way of drawing K samples (a prefill per sample);
- dpokit, prefill per row (`sample_ids(..., shared=1)` on K copies of each prompt): the path before this change;
- dpokit, one shared prefill (`shared=K`, what `sample(num_samples=K)` now does).
All at the same batch (all of the prompts' K rows in one call). Prints each one's best time, generated tokens/s and
the ratio to `num_return_sequences`, and the fraction of the decode bound: the weights read once per decode step at
the memory bandwidth measured here (a large tensor copy).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from dpokit.core.sections import SamplingSettings
from dpokit.data.chat import render_prompts
from dpokit.data.tokenize import encode_prompts
from dpokit.experiments.demo_hh import hh_pair
from dpokit.lm.sampling import _clean_generation_config, left_pad, sample_ids
from dpokit.models.sampling import load_for_sampling

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def hh_prompts(n: int, tokenizer, min_tokens: int) -> list[list[int]]:
    """The first `n` HH prompts (dialogues up to the last reply) of at least `min_tokens` tokens after the chat
    template, as token ids."""
    prompts = []
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            pair = hh_pair(json.loads(line), f"{HH}:{line_no}")
            if not pair:
                continue
            ids = encode_prompts(tokenizer, render_prompts(tokenizer, [pair["prompt"]], True))[0]
            if len(ids) >= min_tokens:
                prompts.append(ids)
            if len(prompts) == n:
                break
    return prompts


def bandwidth_gb_s() -> float:
    """Memory bandwidth of a 256 MiB fp32 copy (read + write), best of 5."""
    a = torch.empty(64 * 2**20)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--min-prompt-tokens", type=int, default=0, help="use only prompts at least this long "
                        "(e.g. 250: multi-turn dialogues, where the prefill is a larger share)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_for_sampling("smollm2-135m-instruct", True)
    model, tokenizer, k = loaded.model.eval(), loaded.tokenizer, args.k
    encoded = hh_prompts(args.prompts, tokenizer, args.min_prompt_tokens)
    rows = [ids for ids in encoded for _ in range(k)]
    settings = SamplingSettings(args.max_new_tokens, 1.0, 1.0, batch_size=len(rows))
    stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    pad = tokenizer.pad_token_id

    def native() -> list[list[int]]:
        ids, mask = left_pad(encoded, pad)
        config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, eos_token_id=stops,
                                  max_new_tokens=args.max_new_tokens, pad_token_id=pad, num_return_sequences=k)
        with torch.no_grad(), _clean_generation_config(model):
            torch.manual_seed(0)
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        return [[t for t in row if t != pad] for row in out[:, ids.shape[1]:].tolist()]

    ways = {"generate(num_return_sequences)": native,
            "dpokit, prefill per row": lambda: sample_ids(model, rows, settings, stops, pad, seed=0, shared=1),
            "dpokit, one shared prefill": lambda: sample_ids(model, rows, settings, stops, pad, seed=0, shared=k)}
    best = {name: float("inf") for name in ways}
    tokens = {}
    for _ in range(args.repeats):
        for name, run in ways.items():
            t = time.perf_counter()
            drawn = run()
            best[name] = min(best[name], time.perf_counter() - t)
            tokens[name] = sum(len(ids) for ids in drawn)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bound = bandwidth_gb_s() * 1e9 / weights  # decode steps per second if each step only read the weights once
    lengths = [len(ids) for ids in encoded]
    print(f"{len(encoded)} prompts of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), "
          f"K = {k}, up to {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads, best of {args.repeats}")
    base = tokens["generate(num_return_sequences)"] / best["generate(num_return_sequences)"]
    for name in ways:
        rate = tokens[name] / best[name]
        steps = args.max_new_tokens / best[name]
        print(f"  {name:<32} {best[name]:7.1f} s  {rate:7.1f} tokens/s  {rate / base:5.2f}x  "
              f"decode bound {steps / bound:.1%} (steps/s {steps:.2f} of {bound:.1f})")


if __name__ == "__main__":
    main()
