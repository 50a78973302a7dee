"""The LM head's log-prob of the chosen tokens, forward + backward, on SmolLM2's shapes: autograd's backward of
`gather − logsumexp` (what dpokit ran before 2026-12-05) against `SelectedLogProb`'s one-buffer backward, interleaved
in one process, `--repeats` times; the fastest of each is the figure (noise only adds time), the median beside it.

Shapes: `--tokens` response tokens (768: about a batch of 8 HH pairs at max_length 256), hidden 576, vocabulary
49,152, tied head (SmolLM2-135M); random values (the cost depends on the sizes only).

    .venv/bin/python benchmarks/head_backward.py --threads 2 --repeats 10     # under a minute, quiet machine
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpokit.lm.logprobs import SelectedLogProb


def autograd_path(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def one_buffer_path(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return SelectedLogProb.apply(logits, targets)[0]


def step(fn, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, upstream: torch.Tensor) -> float:
    start = time.perf_counter()
    logps = fn(hidden @ weight.T, targets)
    torch.autograd.backward(logps, upstream)
    hidden.grad = weight.grad = None
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=768)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, 576, requires_grad=True)
    weight = (torch.randn(49152, 576) * 0.02).requires_grad_()
    targets = torch.randint(0, 49152, (args.tokens,))
    upstream = torch.randn(args.tokens)
    paths = {"autograd (gather - logsumexp)": autograd_path, "SelectedLogProb": one_buffer_path}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        step(fn, hidden, weight, targets, upstream)  # warm-up
    for _ in range(args.repeats):
        for name, fn in paths.items():
            times[name].append(step(fn, hidden, weight, targets, upstream))
    base = min(times["autograd (gather - logsumexp)"])
    print(f"{args.tokens} tokens x 49,152 vocabulary, hidden 576, {args.threads} threads, torch {torch.__version__}; "
          "head matmul forward + backward included in both")
    for name, ts in times.items():
        print(f"{name:30s} fastest {min(ts) * 1e3:7.1f} ms  median {statistics.median(ts) * 1e3:7.1f} ms  "
              f"autograd / this {base / min(ts):.2f}x")


if __name__ == "__main__":
    main()
