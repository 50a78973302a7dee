"""This machine's fp32 matmul peak: the ceiling a training step's FLOP rate is measured against.

`torch.matmul` of square fp32 matrices (one size after another, best of `--repeats` each after a warm-up call), with
the same torch thread count the runners use. A matmul of two n×n matrices is 2n³ FLOPs (one multiply and one add per
term). The peak reported is the best GFLOP/s of any call: what the BLAS kernel reaches when nothing else runs, so a
competing job lowers it; the driver runs this before and after the timed runs and keeps the higher of the two.

    python benchmarks/matmul_peak.py --threads 2            # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import time

from measure import START, other_cores

SIZES = (2048, 3072, 4096)


def gflops(n: int, repeats: int) -> list[float]:
    """GFLOP/s of each timed n×n @ n×n fp32 matmul, after one untimed warm-up call."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)
    torch.matmul(a, b, out=out)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return rates


def measure(sizes: tuple[int, ...], repeats: int, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    per_size = {str(n): gflops(n, repeats) for n in sizes}
    best = max(max(rates) for rates in per_size.values())
    return {"peak_gflops": best, "gflops_by_size": per_size, "torch_threads": torch.get_num_threads(),
            "repeats": repeats, "other_cores": other_cores(START)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="matrix sizes n")
    args = parser.parse_args(argv)
    print(json.dumps(measure(tuple(args.sizes), args.repeats, args.threads)), flush=True)


if __name__ == "__main__":
    main()
