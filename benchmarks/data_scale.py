"""Preparing preference data at scale: dpokit's cold start (read, validate, tokenize, split, write the cache), its
warm start (read the cache), the tokenizer alone on the same texts, and TRL 1.16's DPOTrainer preparation, each in
a fresh process so that each peak RSS is its own, side by side in one run.

    python benchmarks/data_scale.py --pairs 100000 [--trl-pairs 20000] [--out benchmarks/results/data_scale_100k.txt]
    python benchmarks/data_scale.py --pairs 1000000 --trl-pairs 0

The pairs are the Anthropic HH pairs of ../shared/data in the explicit format (prompt / chosen / rejected, split by
dpokit's implicit parser; the 9 bad lines left out), repeated up to `--pairs` with each copy's prompt numbered so
every pair is its own, written as JSONL in a temporary directory. Tokenizer: SmolLM2-135M-Instruct's (vocab
49,152). "Tokenizer alone" is the fast tokenizer's batch call over exactly the texts dpokit tokenizes (every prompt,
every response), 1,024 examples a call as dpokit does, on texts already in memory: the floor for a cold start.
TRL gets the first `--trl-pairs` pairs of the same file (TRL is a benchmark-only dependency: pip install trl==1.16.0)
and a tiny random Llama with SmolLM2's vocabulary, so its model costs nothing; its `datasets` cache is fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"
TOKENIZER = "smollm2-135m-instruct"


def write_pairs(path: Path, n: int) -> None:
    from dpokit.data import load_examples

    examples = load_examples(str(HH), format="implicit", on_bad_record="skip").examples
    with path.open("w") as out:
        for i in range(n):
            ex = examples[i % len(examples)]
            out.write(json.dumps({"prompt": f"\n\nHuman: ({i}){ex.prompt}", "chosen": ex.chosen,
                                  "rejected": ex.rejected}) + "\n")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def phase_dpokit(data: str, cache: str) -> dict:
    from dpokit.losses import parse_objective
    from dpokit.models.loading import load_tokenizer
    from dpokit.trainer.assembly import prepare_data
    from dpokit.trainer.config import Config

    tokenizer = load_tokenizer(TOKENIZER)
    cfg = Config()
    cfg.data.path, cfg.data.cache_dir, cfg.data.eval_fraction = data, cache, 0.01
    cfg.train.progress = False
    before = peak_gib()
    start = time.perf_counter()
    prepared = prepare_data(cfg, tokenizer, parse_objective("sigmoid"))
    seconds = time.perf_counter() - start
    tokens = int(prepared.train.num_tokens().sum()) if hasattr(prepared.train, "num_tokens") else 0
    return {"seconds": seconds, "peak_gib": peak_gib(), "before_gib": before, "examples": len(prepared.train),
            "tokens": tokens, "from_cache": any("from the cache" in n for n in prepared.notes)}


def phase_alone(data: str) -> dict:
    from dpokit.data import load_examples
    from dpokit.models.loading import load_tokenizer

    tokenizer = load_tokenizer(TOKENIZER)
    examples = load_examples(data).examples
    prompts = [ex.prompt.rstrip(" ") for ex in examples]
    responses = [r for ex in examples for r in ex.responses]
    start = time.perf_counter()
    for i in range(0, len(examples), 1024):
        tokenizer(prompts[i:i + 1024], add_special_tokens=False)
        tokenizer(responses[2 * i:2 * i + 2048], add_special_tokens=False)
    return {"seconds": time.perf_counter() - start, "peak_gib": peak_gib()}


def phase_trl(data: str, pairs: int, work: str) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from dpokit.models.loading import load_tokenizer
    from dpokit.models.tiny import tiny_llama

    datasets.config.HF_DATASETS_CACHE = work
    saved = Path(work) / "model"  # TRL reads models and tokenizers by path (not GGUF)
    tokenizer = load_tokenizer(TOKENIZER)
    tokenizer.save_pretrained(saved)
    tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(saved)
    tokenizer, model = AutoTokenizer.from_pretrained(saved), AutoModelForCausalLM.from_pretrained(saved)
    with open(data) as f:
        rows = [json.loads(next(f)) for _ in range(pairs)]
    head = Path(work) / "pairs.jsonl"
    head.write_text("".join(json.dumps(r) + "\n" for r in rows))
    del rows
    torch.set_num_threads(2)
    before = peak_gib()
    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=str(head), split="train", cache_dir=work)
    config = DPOConfig(output_dir=work, use_cpu=True, bf16=False, max_length=512, report_to="none",
                       save_strategy="no", disable_tqdm=True, dataset_num_proc=None)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_gib": peak_gib(), "before_gib": before, "examples": len(trainer.train_dataset)}


def run_phase(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "true"})
    if out.returncode:
        sys.exit(f"phase {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--trl-pairs", type=int, default=20_000, help="0: no TRL run")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        kind, *rest = args.phase
        phases = {"cold": phase_dpokit, "warm": phase_dpokit, "alone": phase_alone,
                  "trl": lambda d, n, w: phase_trl(d, int(n), w)}
        print(json.dumps(phases[kind](*rest)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = str(Path(tmp) / "pairs.jsonl"), str(Path(tmp) / "cache")
        write_pairs(Path(data), args.pairs)
        size = Path(data).stat().st_size
        alone = run_phase("alone", data)
        cold = run_phase("cold", data, cache)
        warm = run_phase("warm", data, cache)
        if not warm["from_cache"] or cold["from_cache"] or warm["examples"] != cold["examples"]:
            sys.exit(f"the warm run did not read back the cold run's examples: cold {cold}, warm {warm}")
        trl = run_phase("trl", data, str(min(args.trl_pairs, args.pairs)), tmp) if args.trl_pairs else None
    lines = [f"{args.pairs:,} HH pairs ({size / 2**20:,.0f} MiB of JSONL; {cold['examples']:,} training examples, "
             f"{cold['tokens']:,} tokens counting each prompt once per response), tokenizer {TOKENIZER}, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end",
             "| phase (own process) | s | vs tokenizer alone | vs cold | peak RSS GiB (after imports + tokenizer) |",
             "|---|---|---|---|---|",
             f"| tokenizer alone (texts in memory) | {alone['seconds']:.2f} | 1.00x | | {alone['peak_gib']:.2f} |"]
    for name, r in (("dpokit cold (and write the cache)", cold), ("dpokit warm (from the cache)", warm)):
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['seconds'] / alone['seconds']:.2f}x | "
                     f"{r['seconds'] / cold['seconds']:.1%} | {r['peak_gib']:.2f} ({r['before_gib']:.2f}) |")
    if trl:
        per = trl["seconds"] / trl["examples"] * cold["examples"]
        lines.append(f"| TRL 1.16 DPOTrainer preparation, first {trl['examples']:,} pairs | {trl['seconds']:.2f} "
                     f"(x{cold['examples'] / trl['examples']:.0f}: {per:.0f}) | | | {trl['peak_gib']:.2f} "
                     f"({trl['before_gib']:.2f}) |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + f"\n\nRerun: python benchmarks/data_scale.py --pairs {args.pairs} "
                                         f"--trl-pairs {args.trl_pairs}\n")


if __name__ == "__main__":
    main()
