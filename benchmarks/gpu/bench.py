"""The first GPU measurements (issue 25): bf16 matmul peak, then dpokit vs TRL 1.16 per model shape. `run.sh` drives it.

    python benchmarks/gpu/bench.py peak  --out OUT               # $OUT/gpu_peak.json: bf16 torch.mm 8192², TFLOP/s
    python benchmarks/gpu/bench.py model qwen2-0.5b --out OUT    # $OUT/gpu_qwen2-0.5b.json, rewritten after each run
    python benchmarks/gpu/bench.py peak --dry-run                # the same on CPU, tiny sizes (the rehearsal)

Models are random-init from the published dimensions of SmolLM2-135M, Qwen2-0.5B and Qwen2-1.5B (transformers
LlamaConfig / Qwen2Config; vocabulary sizes included, so the LM head costs what it does in the real model), with
the benchmark fixture's BPE tokenizer (8,192 ids, trained on the HH text; ids above it are never seen) and the
fixture's HH pairs. Each system and mode is one fresh process of `run_dpokit.py` / `run_trl.py`, the CPU benchmark's
runners (`--fixture`, `--device cuda`, `--precision bf16`): dpokit default (packing, shared prompt, chunked head),
TRL default, dpokit with packing off (`plain`), dpokit `flex` (train.attention=flex) and TRL with
`use_liger_kernel` where liger-kernel imports. Every figure: pairs/s, non-pad tokens/s, peak GPU memory
(torch.cuda.max_memory_allocated), MFU = the minimal work 8·N·T (flops.py) per second over the measured peak.

The `model` command imports only the standard library; the runners and `fixture`/`peak` import torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import flops  # noqa: E402  (benchmarks/ on the path first: the CPU benchmark's modules are reused)
from compare_trl import run_one  # noqa: E402
from measure import add_shared_args, forward_args, versions  # noqa: E402

CACHE = BENCH / ".cache" / "gpu"
# published dimensions: SmolLM2-135M (HuggingFaceTB), Qwen2-0.5B and Qwen2-1.5B (Qwen); tiny-*: the dry run's
SHAPES: dict[str, dict[str, object]] = {
    "smollm2-135m": {"arch": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    "qwen2-0.5b": {"arch": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                   "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "qwen2-1.5b": {"arch": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                   "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "tiny-llama": {"arch": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8192, "tie_word_embeddings": True},
    "tiny-qwen2": {"arch": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 9001, "tie_word_embeddings": True},
}
GPU_MODELS, DRY_MODELS = ("smollm2-135m", "qwen2-0.5b", "qwen2-1.5b"), ("tiny-llama", "tiny-qwen2")
RUNS = (("dpokit", "default"), ("trl", "default"), ("dpokit", "plain"), ("dpokit", "flex"), ("trl", "liger"))
SETTINGS = {"gpu": {"steps": 5, "batch_size": 8, "max_length": 1024, "limit": 40, "peak_n": 8192},
            "dry": {"steps": 3, "batch_size": 2, "max_length": 128, "limit": 6, "peak_n": 512}}


def cuda_device() -> str:
    """The device everything runs on: CUDA unless this is the dry run (or there is none)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def measure_peak(n: int, repeats: int = 10) -> dict:
    """Best TFLOP/s of an n×n @ n×n bf16 torch.mm (2n³ FLOPs), after a warm-up; the MFU denominator."""
    import torch

    device = cuda_device()
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e12)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"device": name, "n": n, "dtype": "bfloat16", "peak_tflops": max(rates), "tflops": rates,
            "torch": torch.__version__, "cuda": torch.version.cuda}


def build_fixture(name: str) -> Path:
    """fixture.json for `name` (cached under benchmarks/.cache/gpu): the HH pairs and a random-init model directory."""
    import fixture
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    root, spec = CACHE / name, dict(SHAPES[name])
    manifest = root / "fixture.json"
    if manifest.is_file() and json.loads(manifest.read_text())["spec"] == spec:
        return manifest
    pairs, num_pairs = fixture.write_pairs(fixture.data_path(), CACHE / "hh_pairs.jsonl")
    tokenizer_dir = CACHE / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        fixture.tokenizer_for(fixture.raw_texts(fixture.data_path())).save_pretrained(tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[spec.pop("arch")]
    config = config_class(**spec, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(cuda_device()):  # random init on the GPU: seconds instead of a minute for 1.5B
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    made = fixture.Fixture(str(pairs), str(root / "model"), str(root / "model"), num_pairs,
                           sum(p.numel() for p in model.parameters()))
    manifest.write_text(json.dumps({"spec": SHAPES[name], "fixture": vars(made)}, indent=2))
    return manifest


def runnable(system: str, mode: str, device: str) -> str | None:
    """Why a run is left out on this machine, or None."""
    if mode == "flex" and device != "cuda":
        return "train.attention=flex trains on CUDA only"
    if mode == "liger" and (device != "cuda" or importlib.util.find_spec("liger_kernel") is None):
        return "liger-kernel not importable here (or no CUDA)"
    return None


def run_model(name: str, args: argparse.Namespace) -> dict:
    """Every system and mode on model `name`, one fresh process each; `$OUT/gpu_NAME.json` rewritten after each."""
    python, out = sys.executable, Path(args.out) / f"gpu_{name}.json"
    proc = subprocess.run([python, __file__, "fixture", name], stdout=subprocess.PIPE, text=True, check=True)
    args.fixture = proc.stdout.strip().splitlines()[-1]
    fix = json.loads(Path(args.fixture).read_text())["fixture"]
    peak_file = Path(args.out) / "gpu_peak.json"
    peak = json.loads(peak_file.read_text()) if peak_file.is_file() else None
    device = "cuda" if peak and peak["device"] != "cpu" else "cpu"
    args.device = device
    report = {"model": name, "shape": SHAPES[name], "num_params": fix["num_params"], "peak": peak,
              "versions": versions(("torch", "transformers", "trl", "accelerate", "peft", "liger-kernel")),
              "settings": {k: getattr(args, k) for k in ("steps", "warmup", "batch_size", "max_length", "limit",
                                                         "precision", "optimizer")}, "runs": []}
    for system, mode in RUNS:
        report["runs"].append(one_run(system, mode, name, args, fix["num_params"], peak))
        out.write_text(json.dumps(report, indent=2))
    return report


def one_run(system: str, mode: str, name: str, args: argparse.Namespace, num_params: int, peak: dict | None) -> dict:
    """One runner process; its figures, or why it was skipped or failed (an OOM is a result too)."""
    why = runnable(system, mode, args.device)
    if why:
        return {"system": system, "mode": mode, "skipped": why}
    script = "run_dpokit.py" if system == "dpokit" else "run_trl.py"
    argv = [*forward_args(args), "--mode", mode]
    try:
        result = run_one(sys.executable, script, argv, f"gpu-{name}-{system}-{mode}")
    except SystemExit as err:  # run_one's failure, with the log's last lines
        return {"system": system, "mode": mode, "error": str(err)[-3000:]}
    rate = flops.run_flops(result, num_params, args.warmup)["achieved_gflops"] / 1e3
    figures = {k: result[k] for k in ("pairs_per_s", "tokens_per_s", "mean_s_per_step", "peak_gpu_gib",
                                      "peak_rss_gib", "setup_s")}
    mfu = rate / peak["peak_tflops"] if peak else None
    print(f"{name} {system} {mode}: {figures['pairs_per_s']:.2f} pairs/s, MFU {mfu or 0:.1%}", file=sys.stderr)
    return {"system": system, "mode": mode, **figures, "achieved_tflops": rate, "mfu": mfu, "raw": result}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("peak", "fixture", "model"))
    parser.add_argument("name", nargs="?", choices=sorted(SHAPES), help="the model shape (fixture, model)")
    parser.add_argument("--out", default=str(BENCH / "gpu" / "out"), help="where the JSON results go")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, few steps: the rehearsal")
    add_shared_args(parser)
    args = parser.parse_args(argv)
    sizes = SETTINGS["dry" if args.dry_run else "gpu"]
    for key in ("steps", "batch_size", "max_length", "limit"):
        setattr(args, key, sizes[key])
    args.precision, args.optimizer = "bf16", "adamw"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.command == "peak":
        (Path(args.out) / "gpu_peak.json").write_text(json.dumps(measure_peak(sizes["peak_n"]), indent=2))
    elif args.command == "fixture":
        print(build_fixture(args.name))
    else:
        run_model(args.name, args)


if __name__ == "__main__":
    main()
