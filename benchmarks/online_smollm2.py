"""On-policy DPO on the real model: SmolLM2-135M-Instruct, single-turn Anthropic HH prompts, a `dpokit rm` reward.

    python benchmarks/online_smollm2.py [--out DIR] [--rounds 3] [--prompts-per-round 8] [--threads N]

1. a reward model: `dpokit rm` from SmolLM2 on `--rm-pairs` single-turn HH pairs (not the prompts used below);
2. `dpokit online` from SmolLM2 on other single-turn HH prompts, K samples each round, labels by the reward model;
3. prints each round's figures (rounds.jsonl) and where its time went: sampling, scoring, evaluating, training.

Reruns reuse the reward model in `--out/rm`. The HH file is `../shared/data/hh_harmless_test.jsonl.gz`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import time
from pathlib import Path

import torch

import dpokit
from dpokit.experiments.demo_hh import hh_pair

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl.gz"


def single_turn_pairs(path: Path, max_chars: int, seed: int) -> list[dict]:
    """The clean HH pairs whose prompt is one user turn, shuffled by `seed`."""
    pairs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            row = json.loads(line)
            pair = hh_pair(row, f"{path}:{line_no}")
            if pair and len(pair["prompt"]) == 1 and len(row["chosen"]) <= max_chars:
                pairs.append(pair)
    random.Random(seed).shuffle(pairs)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="online-smollm2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts-per-round", type=int, default=8)
    parser.add_argument("--samples-per-prompt", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rm-pairs", type=int, default=256)
    parser.add_argument("--rm-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = single_turn_pairs(HH, 600, args.seed)
    rm_pairs, prompt_pairs = pairs[:args.rm_pairs], pairs[args.rm_pairs:]
    (out / "rm_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in rm_pairs))
    prompts = prompt_pairs[:args.rounds * args.prompts_per_round]
    (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in prompts))

    start = time.perf_counter()
    if not (out / "rm" / "summary.json").is_file():
        rm = dpokit.RewardModelConfig()
        rm.model.name_or_path, rm.data.path, rm.train.output_dir = "smollm2-135m-instruct", str(
            out / "rm_pairs.jsonl"), str(out / "rm")
        rm.data.max_length, rm.train.max_steps, rm.train.batch_size, rm.train.lr = 320, args.rm_steps, 8, 1e-5
        rm.train.optimizer, rm.data.eval_fraction = "adamw", 0.1
        summary = dpokit.rm(rm)
        print(f"reward model: {summary.steps} steps in {summary.seconds:.0f} s; held-out {summary.final_eval}")
    rm_seconds = time.perf_counter() - start

    cfg = dpokit.OnlineConfig(prompts=str(out / "prompts.jsonl"), samples_per_prompt=args.samples_per_prompt,
                              rounds=args.rounds, prompts_per_round=args.prompts_per_round,
                              steps_per_round=args.steps_per_round, max_new_tokens=args.max_new_tokens,
                              sample_batch_size=16, max_length=384)
    cfg.reward.source = str(out / "rm")
    cfg.model.name_or_path, cfg.train.output_dir = "smollm2-135m-instruct", str(out / "online")
    cfg.train.batch_size, cfg.train.lr, cfg.train.seed = 4, 1e-6, args.seed
    cfg.train.resume = "latest" if (out / "online" / "config.yaml").is_file() else None
    summary = dpokit.online(cfg)
    print(f"\nreward model {rm_seconds:.0f} s; online {summary.seconds:.0f} s for {len(summary.rounds)} rounds")
    print("round  reward mean  best    worst   KL     pairs  loss_before  acc_before  sample_s  score_s  eval_s  "
          "train_s")
    for r in summary.rounds:
        print(f"{r['round']:>5}  {r['reward_mean']:+.4f}     {r['reward_best']:+.4f} {r['reward_worst']:+.4f} "
              f"{r['kl']:.4f} {r['pairs']:>5}  {r.get('loss_before', float('nan')):.4f}       "
              f"{r.get('accuracy_before', float('nan')):.3f}       {r['seconds_sample']:>6.1f}  "
              f"{r['seconds_score']:>6.1f}  {r.get('seconds_eval', 0):>5.1f}  {r.get('seconds_train', 0):>6.1f}")


if __name__ == "__main__":
    main()
