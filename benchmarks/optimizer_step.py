"""AdamW's step on SmolLM2-135M's parameters: torch's for-loop (what dpokit ran on CPU before: torch picks foreach
only on CUDA), foreach, and fused (what `optimizer_for` picks now), interleaved in one process, `--repeats` times.

The parameters are SmolLM2-135M-Instruct's shapes (hidden 576, 30 layers, 9/3 heads, intermediate 1536, vocab
49,152, tied embedding), random values with random gradients: the optimizer's cost depends on the sizes only. The
fastest of the repeats is the figure (noise only adds time); the median is printed beside it.

    .venv/bin/python benchmarks/optimizer_step.py --threads 2 --repeats 10     # about a minute
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def smollm2_shapes() -> list[torch.Tensor]:
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    return [p.detach() for p in model.parameters()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = smollm2_shapes()
    print(f"{sum(p.numel() for p in shapes) / 1e6:.1f}M parameters in {len(shapes)} tensors, "
          f"{args.threads} threads, torch {torch.__version__}")
    runs = {}
    for name, flags in VARIANTS.items():
        params = [torch.nn.Parameter(p.clone()) for p in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        runs[name] = (params, torch.optim.AdamW(params, lr=1e-6, weight_decay=0.01, **flags))
        runs[name][1].step()  # allocates the state
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, (_, optimizer) in runs.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    base = min(times["for-loop"])
    for name, ts in times.items():
        print(f"{name:9s} fastest {min(ts) * 1e3:7.1f} ms  median {statistics.median(ts) * 1e3:7.1f} ms  "
              f"for-loop / this {base / min(ts):.2f}x")


if __name__ == "__main__":
    main()
