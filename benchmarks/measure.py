"""What both runners share: the command-line contract, peak memory, and how step times become one result line.

Both runners take the same arguments and print the same JSON keys, so the driver (and a person) can compare them
line by line. The first `--warmup` steps are dropped from every statistic in both systems alike: step 1 pays for
allocator growth and lazy initialisation that a long run amortises.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path


@dataclass
class RunResult:
    """One runner's output: a single JSON line on stdout (the last line the runner prints)."""

    system: str  # "trl" | "dpokit"
    mode: str
    steps: int
    batch_size: int
    step_times_s: list[float]
    step_tokens: list[int]  # non-pad tokens of each step's batch (prompt+chosen and prompt+rejected rows)
    step_pair_tokens: list[int]  # the same with each prompt counted once per pair: the minimal work's tokens
    median_s_per_step: float
    mean_s_per_step: float  # total time of the measured steps / their number: what a run of these batches takes
    pairs_per_s: float  # pairs of the measured steps / their total time
    tokens_per_s: float  # non-pad tokens of the measured steps / their total time
    peak_rss_gib: float  # getrusage ru_maxrss: the whole process, model loading and data preparation included
    peak_hwm_gib: float | None  # /proc/self/status VmHWM (same quantity, immune to rusage inherited across exec)
    setup_s: float  # everything before step 1: loading, tokenization, and precomputed reference log-probs
    first_batch: dict[str, float]  # loss, logps/chosen, logps/rejected, rewards/margins of step 1 (before update)
    loadavg_1m: float  # at the end of the run; above the core count, other jobs were competing for the CPU
    other_cores: float | None  # CPU cores other processes kept busy on average over this run (from /proc/stat)
    config: dict[str, object] = field(default_factory=dict)
    peak_gpu_gib: float | None = None  # torch.cuda.max_memory_allocated over the whole run; None off CUDA


SHARED = ("model", "steps", "warmup", "batch_size", "max_length", "beta", "lr", "optimizer", "max_grad_norm",
          "gradient_checkpointing", "limit", "seed", "threads", "fixture", "precision",
          "device")  # passed by the driver to both runners unchanged


def add_shared_args(parser: argparse.ArgumentParser) -> None:
    """The arguments both runners accept with the same meaning (and the driver forwards to both)."""
    parser.add_argument("--small", action="store_true", help="use the small development fixture")
    parser.add_argument("--model", choices=("random", "smollm2"), default="random",
                        help="random Llama (33.7M, BPE 8192) or the real SmolLM2-135M-Instruct (vocab 49,152)")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps")
    parser.add_argument("--warmup", type=int, default=1, help="leading steps left out of the statistics")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=256, help="prompt + response tokens per sequence")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--optimizer", choices=("adamw", "rmsprop"), default="adamw")
    parser.add_argument("--max-grad-norm", type=float, default=10.0)
    parser.add_argument("--gradient-checkpointing", choices=("off", "on"), default="off")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N pairs, 0 for all (bounds tokenization and precompute time)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--fixture", default=None,
                        help="a fixture.json manifest to use instead of --model/--small's (benchmarks/gpu/bench.py)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast over fp32 weights (dpokit train.precision, TRL bf16=True)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where TRL trains (dpokit: CUDA "
                                                                                "when there is one)")


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """Shared arguments plus the two that differ per run: the reference weights and system-specific overrides."""
    add_shared_args(parser)
    parser.add_argument("--ref-model", default=None, help="reference weights (default: the policy's own)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for this system (dpokit dotted keys / DPOConfig fields)")


def forward_args(args: argparse.Namespace, shared: tuple[str, ...] = SHARED) -> list[str]:
    """The driver's values of the shared arguments (`shared`: their names), as runner command-line flags."""
    argv = ["--small"] if args.small else []
    for name in shared:
        value = getattr(args, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each package, "missing" where it is not installed."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(CPU-seconds the whole machine has been busy, this process's CPU-seconds, monotonic wall time), or None
    where /proc/stat is missing. Two snapshots give the CPU that *other* processes used in between."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    ticks = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]  # user .. steal
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system, time.monotonic()


def other_cores(since: tuple[float, float, float] | None) -> float | None:
    """Average number of cores other processes kept busy since the snapshot `since` (0 on an otherwise idle
    machine; 1 when another single-threaded job ran throughout). Hypervisor steal counts as other work."""
    now = cpu_snapshot()
    if since is None or now is None or now[2] <= since[2]:
        return None
    return max(0.0, ((now[0] - since[0]) - (now[1] - since[1])) / (now[2] - since[2]))


START = cpu_snapshot()  # runners import this module first thing: the run's contention is measured from here


def peak_rss_gib() -> float:
    """ru_maxrss is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def peak_hwm_gib() -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return None


def peak_gpu_gib() -> float | None:
    """torch.cuda.max_memory_allocated in GiB, if this process imported torch and used CUDA; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def pair_tokens(sequence_tokens: int, response_tokens: int, responses: int) -> int:
    """Tokens of a batch with each prompt counted once per example, from what every layout can count.

    Args:
        sequence_tokens: non-pad tokens of the `prompt + response_k` rows (each prompt counted `responses` times).
        response_tokens: the response tokens among them.
        responses: K, responses per prompt (2 for a preference pair).
    """
    return response_tokens + (sequence_tokens - response_tokens) // responses


def after_warmup(values: list, warmup: int) -> list:
    """The measured steps' values: those after the first `warmup` steps (all of them if there are no others)."""
    return values[warmup:] if len(values) > warmup else values


def summarize(system: str, mode: str, args: argparse.Namespace, times: list[float], tokens: list[int],
              pair_counts: list[int], setup_s: float, first_batch: dict[str, float],
              config: dict[str, object]) -> RunResult:
    """Rates over the steps after warm-up (all steps if there are no others): total work over total time, since the
    batches differ in length and a median step would stand for one batch, not the run (the median is kept beside)."""
    measured, measured_tokens = after_warmup(times, args.warmup), after_warmup(tokens, args.warmup)
    return RunResult(
        system=system, mode=mode, steps=len(times), batch_size=args.batch_size,
        step_times_s=times, step_tokens=tokens, step_pair_tokens=pair_counts,
        median_s_per_step=statistics.median(measured), mean_s_per_step=statistics.mean(measured),
        pairs_per_s=args.batch_size * len(measured) / sum(measured),
        tokens_per_s=sum(measured_tokens) / sum(measured),
        peak_rss_gib=peak_rss_gib(), peak_hwm_gib=peak_hwm_gib(), setup_s=setup_s,
        first_batch=first_batch, loadavg_1m=os.getloadavg()[0], other_cores=other_cores(START), config=config,
        peak_gpu_gib=peak_gpu_gib(),
    )


def emit(result: RunResult) -> None:
    print(json.dumps(asdict(result)), flush=True)


def parse_sets(items: list[str]) -> dict[str, str]:
    """["a=1", "b.c=x"] -> {"a": "1", "b.c": "x"}; values stay strings (each system parses its own)."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        pairs[key.strip()] = value
    return pairs
