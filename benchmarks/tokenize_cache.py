"""The tokenization cache: a cold `prepare_data` (read, validate, split, tokenize, write the cache) against a warm
one (read the cache back) and the tokenizer's own batch tokenization of the same texts, side by side in one run.

    python benchmarks/tokenize_cache.py [--pairs 20000] [--tokenizer smollm2-135m-instruct]

The pairs are the 2,312 Anthropic HH pairs of ../shared/data repeated (each copy's prompt numbered, so every pair is
its own) up to `--pairs`, written as JSONL in a temporary directory with a fresh cache beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import tempfile
import time
from pathlib import Path

from dpokit.losses import parse_objective
from dpokit.models.loading import load_tokenizer
from dpokit.trainer.assembly import prepare_data
from dpokit.trainer.config import Config

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def write_pairs(path: Path, n: int) -> list[str]:
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    texts = []
    with path.open("w") as out:
        for i in range(n):
            row = rows[i % len(rows)]
            copy = {"chosen": f"\n\nHuman: ({i}){row['chosen']}", "rejected": f"\n\nHuman: ({i}){row['rejected']}"}
            out.write(json.dumps(copy) + "\n")
            texts += [copy["chosen"], copy["rejected"]]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        texts = write_pairs(data, args.pairs)
        cfg = Config()
        cfg.data.path, cfg.data.cache_dir, cfg.data.on_bad_record = str(data), str(Path(tmp) / "cache"), "skip"
        cfg.train.progress = False
        objective = parse_objective("sigmoid")
        t = time.perf_counter()
        tokenizer(texts)
        alone = time.perf_counter() - t
        t = time.perf_counter()
        cold = prepare_data(cfg, tokenizer, objective)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        warm = prepare_data(cfg, tokenizer, objective)
        warm_s = time.perf_counter() - t
        assert warm.train == cold.train and "read from the cache" in warm.notes[-1]
        size = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*") if p.is_file())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.pairs:,} HH pairs ({len(cold.train):,} examples), tokenizer {args.tokenizer}")
    print(f"  batch-tokenize the {len(texts):,} texts alone   {alone:7.2f} s")
    print(f"  cold prepare_data (and write the cache) {cold_s:7.2f} s  {cold_s / alone:5.2f}x the tokenizer alone")
    print(f"  warm prepare_data (read the cache)      {warm_s:7.2f} s  {warm_s / cold_s:6.1%} of cold")
    print(f"  cache on disk {size / 2**20:.1f} MiB; peak RSS of this process {rss:.2f} GiB")


if __name__ == "__main__":
    main()
