"""DPO with and without the `kl` term on the demo's task: does a larger λ keep the policy closer to πref?

    .venv/bin/python benchmarks/kl_term.py --size quick --steps 60 --lambdas 0 0.1 1 4 --out /tmp/kl-term
    .venv/bin/python benchmarks/kl_term.py --size quick --steps 60 --betas 0.1 1 --lambdas 0 1 --out /tmp/kl-beta

Builds the demo's task and πref exactly as `dpokit demo` does (review corpus, BPE tokenizer, SFT of a random tiny
Llama), samples the preference pairs once, then trains one run per (β, λ) from πref, the same steps, batches and
seed: `sigmoid + λ*kl` (λ = 0: `sigmoid` alone). Each run ends with the frontier's held-out evaluation: the mean
sequence KL(π‖πref) of completions sampled from π (`dpokit.lm.sequence_kl`, nats per completion) and the mean VADER
reward. Prints a table and writes OUT/kl_term.json; `tests/integration/test_kl_term_demo.py` runs the tiny size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from dpokit.experiments.demo import SIZES, build_sft_model, demo_prompts
from dpokit.experiments.frontier import run_frontier
from dpokit.experiments.frontier_config import FrontierConfig, MethodSpec
from dpokit.rewards.sources import load_reward


@dataclass
class Row:
    """One (β, λ) run, at its last step."""

    beta: float
    lam: float
    loss: str
    kl: float  # held-out mean sequence KL(π‖πref), nats per sampled completion
    kl_se: float
    reward: float  # held-out mean VADER reward
    reward_se: float
    train_kl_token: float | None  # the kl term's value (per-token KL on the batch's responses) at the last log line
    seconds: float


def method(lam: float, beta: float) -> MethodSpec:
    loss = "sigmoid" if lam == 0 else f"sigmoid + {lam:g}*kl"
    return MethodSpec(f"DPO λ={lam:g}", loss, beta=beta)


def compare(out: Path, size: str, steps: int, lambdas: list[float], betas: list[float], seed: int) -> list[Row]:
    """SFT πref once, then one DPO run per (β, λ), β the outer loop; the rows in that order."""
    settings = replace(SIZES[size], method_steps=steps)
    grid = [(beta, lam) for beta in betas for lam in lambdas]
    out.mkdir(parents=True, exist_ok=True)
    sft = build_sft_model(out, settings, seed)
    train_prompts, eval_prompts = demo_prompts(settings, seed)
    run = {"train.max_steps": steps, "train.batch_size": settings.batch_size, "train.lr": settings.lr,
           "train.optimizer": "adamw", "train.warmup_steps": min(10, steps // 4), "train.eval_every": steps,
           "train.log_every": 1, "data.max_length": 64}
    cfg = FrontierConfig(model=str(sft.path), train_prompts=train_prompts, eval_prompts=eval_prompts,
                         output_dir=str(out), methods=[method(lam, beta) for beta, lam in grid], run=run,
                         max_new_tokens=settings.max_new_tokens, seed=seed, progress=False)
    result = run_frontier(cfg, load_reward("vader"))
    rows = []
    for (beta, lam), res in zip(grid, result.runs, strict=True):
        final = res.final
        rows.append(Row(beta, lam, res.method.loss, final.kl, final.kl_se, final.reward, final.reward_se,
                        _last_train(Path(res.run_dir) / "metrics.jsonl", "kl/token"), res.seconds))
    return rows


def _last_train(path: Path, key: str) -> float | None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    values = [r[key] for r in lines if r.get("split") == "train" and key in r]
    return values[-1] if values else None


def table(rows: list[Row]) -> str:
    lines = ["| β | λ | loss | held-out KL(π‖πref), nats | reward | kl term at the end (nats/token) | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        term = "–" if r.train_kl_token is None else f"{r.train_kl_token:.4f}"
        lines.append(f"| {r.beta:g} | {r.lam:g} | `{r.loss}` | {r.kl:.3f} ± {r.kl_se:.3f} "
                     f"| {r.reward:+.3f} ± {r.reward_se:.3f} | {term} | {r.seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="quick", help="the demo's size (model, data)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 1.0, 4.0], help="weights of the kl term")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1], help="DPO's β: one run per (β, λ)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("kl-term-run"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (one, as `dpokit demo` uses)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = compare(args.out, args.size, args.steps, args.lambdas, args.betas, args.seed)
    command = "python benchmarks/kl_term.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "kl_term.json").write_text(json.dumps({"command": command, "rows": [asdict(r) for r in rows]},
                                                      indent=2))
    print(table(rows))
    print(f"{time.perf_counter() - start:.0f} s in all; {args.out / 'kl_term.json'}")
    return rows


if __name__ == "__main__":
    main()
