"""The PPO benchmark's fixture, built once and cached under benchmarks/.cache/ppo/: what both systems read.

- **Tokenizer**: byte-level BPE (vocab 8192) trained on the HH dialogues, as the DPO benchmark's (fixture.py).
- **Policy** (= πref, the start): `dpokit.models.tiny.tiny_llama`, fixture.py's shapes, random init (seed 0).
- **Reward model**: a `LlamaForSequenceClassification` (one output) of the same shape, random init, seed 2, saved
  with the tokenizer. dpokit reads it as `reward.source=DIR` (a plain Hugging Face classifier: its classifier path);
  TRL as `reward_model`, and, as TRL's PPO example does, initialises its separate value model from it.
- **Prompts**: the HH prompts (dpokit's implicit-format parser, as `dpokit train` splits them) with at least
  `PROMPT_TOKENS` tokens, cut to their last `PROMPT_TOKENS` tokens, kept only where the cut text re-encodes to exactly
  those ids. So every prompt is the same length in both systems, whatever order each draws them in, and every
  rollout has the same shape. Written as JSONL `{prompt, input_ids}`: dpokit reads the text (and encodes it with its
  one prompt encoder), TRL's PPO the ids (it takes a tokenized dataset); the two agree by construction.

    python benchmarks/ppo_fixture.py            # 33.7M-parameter Llama (fixture.py's FULL shape)
    python benchmarks/ppo_fixture.py --small    # 2.5M, for development

Prints one JSON line with the paths.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fixture import CACHE_DIR, FULL, SMALL, VOCAB_SIZE, data_path, raw_texts, save_model, tokenizer_for

PROMPT_TOKENS = 64
FORMAT_VERSION = 1  # bump when what is built changes, so stale caches are rebuilt


@dataclass
class PPOFixture:
    prompts: str  # JSONL {prompt, input_ids}, every prompt PROMPT_TOKENS tokens
    model: str  # policy = reference (save_pretrained directory with the tokenizer)
    reward_model: str  # sequence classifier, one output, same shape as the policy
    num_prompts: int
    prompt_tokens: int
    num_params: int  # policy
    reward_params: int


def build(small: bool = False) -> PPOFixture:
    """The cached fixture, rebuilt when its spec (shape, vocab, prompt length, data file) changed."""
    shape = SMALL if small else FULL
    source = data_path()
    spec = {"version": FORMAT_VERSION, "vocab": VOCAB_SIZE, "shape": shape, "prompt_tokens": PROMPT_TOKENS,
            "data": str(source), "data_bytes": source.stat().st_size}
    root = CACHE_DIR / "ppo" / ("small" if small else "full")
    manifest = root / "fixture.json"
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("spec") == spec:
            return PPOFixture(**saved["fixture"])
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_for(raw_texts(source))
    num_params = save_model(tokenizer, shape, 0, root / "model")
    reward_params = save_reward_model(tokenizer, shape, 2, root / "reward_model")
    num_prompts = write_prompts(tokenizer, source, root / "prompts.jsonl")
    fix = PPOFixture(str(root / "prompts.jsonl"), str(root / "model"), str(root / "reward_model"), num_prompts,
                     PROMPT_TOKENS, num_params, reward_params)
    manifest.write_text(json.dumps({"spec": spec, "fixture": asdict(fix)}, indent=2))
    return fix


def save_reward_model(tokenizer, shape: dict[str, int], seed: int, out: Path) -> int:
    """A random one-output Llama classifier with the policy's shape (pad id set: classifiers find the last real
    token through it), saved as safetensors beside the tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    from dpokit.models.tiny import tiny_llama

    config = tiny_llama(tokenizer, **shape).config
    config.num_labels = 1
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def write_prompts(tokenizer, source: Path, out: Path) -> int:
    """HH prompts cut to their last PROMPT_TOKENS tokens (see the module docstring). Returns how many."""
    from dpokit.data import load_examples
    from dpokit.data.tokenize import encode_prompts

    loaded = load_examples(str(source), format="implicit", on_bad_record="skip")
    prompts = list(dict.fromkeys(ex.prompt for ex in loaded.examples))  # a dialogue's prompt once
    rows = []
    for ids in encode_prompts(tokenizer, prompts):
        if len(ids) < PROMPT_TOKENS:
            continue
        cut = ids[-PROMPT_TOKENS:]
        text = tokenizer.decode(cut)
        if encode_prompts(tokenizer, [text])[0] == cut:  # the text alone gives back exactly these ids
            rows.append({"prompt": text, "input_ids": cut})
    with out.open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    print(f"{len(rows)} of {len(prompts)} distinct HH prompts have >= {PROMPT_TOKENS} tokens and re-encode exactly "
          "after the cut", file=sys.stderr)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2.5M-parameter model for development runs")
    fix = build(parser.parse_args().small)
    print(f"policy {fix.num_params / 1e6:.2f}M, reward model {fix.reward_params / 1e6:.2f}M parameters; "
          f"{fix.num_prompts:,} prompts of {fix.prompt_tokens} tokens", file=sys.stderr)
    print(json.dumps(asdict(fix)))


if __name__ == "__main__":
    main()
