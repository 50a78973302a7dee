"""Training options against their plain counterparts: same numbers where the math says they must be."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpokit.trainer.config import build_config
from dpokit.trainer.loop import train
from dpokit.trainer.optim import lr_factor


def run(model_dir, hh_path, out, **overrides):
    values = {"model.name_or_path": str(model_dir), "data.path": str(hh_path), "train.output_dir": str(out),
              "data.limit": 16, "data.on_bad_record": "skip", "data.max_length": 96, "train.max_steps": 3,
              "train.batch_size": 4, "train.lr": 1e-3, "train.optimizer": "adamw", "train.progress": False,
              "train.save": False, "reference.cache_dir": str(out.parent / "cache"), **overrides}
    train(build_config(None, values))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_curves(a, b, keys=("loss", "rewards/margins", "logps/chosen", "grad_norm"), tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in keys:
            assert x[key] == pytest.approx(y[key], abs=tol, rel=tol), key


def test_same_seed_same_run(model_dir, hh_path, tmp_path):
    same_curves(run(model_dir, hh_path, tmp_path / "a"), run(model_dir, hh_path, tmp_path / "b"), tol=0)


def test_precomputed_reference_trains_like_a_frozen_copy(model_dir, hh_path, tmp_path):
    copy_run = run(model_dir, hh_path, tmp_path / "copy", **{"reference.mode": "copy"})
    cached_run = run(model_dir, hh_path, tmp_path / "cached", **{"reference.mode": "precomputed"})
    same_curves(copy_run, cached_run)
    files = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    again = run(model_dir, hh_path, tmp_path / "again", **{"reference.mode": "precomputed", "loss.beta": 0.5})
    assert files[0].stat().st_mtime_ns == stamp  # a β sweep reuses the cache ...
    assert again[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # ... and still starts from πθ = πref


def test_gradient_accumulation_matches_one_big_batch(model_dir, hh_path, tmp_path):
    big = run(model_dir, hh_path, tmp_path / "big", **{"train.batch_size": 8, "train.shuffle": False})
    accum = run(model_dir, hh_path, tmp_path / "acc",
                **{"train.batch_size": 4, "train.grad_accum": 2, "train.shuffle": False})
    same_curves(big, accum, tol=1e-4)


def test_gradient_checkpointing_changes_nothing_but_memory(model_dir, hh_path, tmp_path):
    plain = run(model_dir, hh_path, tmp_path / "plain")
    ckpt = run(model_dir, hh_path, tmp_path / "ckpt", **{"model.gradient_checkpointing": True})
    same_curves(plain, ckpt)


def test_lora_with_adapter_reference(model_dir, hh_path, tmp_path):
    out = tmp_path / "lora"
    steps = run(model_dir, hh_path, out, **{"model.lora.enabled": True, "model.lora.r": 4, "train.max_steps": 6,
                                             "train.lr": 1e-2, "train.save": True})
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0 at init: adapter on == adapter off
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model_dir)  # the base as named in model.name_or_path
    card = (out / "README.md").read_text()  # the model card: base, data, loss, β, steps, final metrics
    assert card.startswith("---\nlibrary_name: transformers\n") and "- lora\n" in card
    assert f"`{model_dir}`" in card and f"`{hh_path}`" in card and "β = 0.1" in card and "6 optimizer steps" in card
    assert f"| loss | {steps[-1]['loss']:.4g} |" in card
    assert "library_name: peft" in (out / "adapter" / "README.md").read_text()


def test_bf16_autocast_runs_the_same_objective(model_dir, hh_path, tmp_path):
    steps = run(model_dir, hh_path, tmp_path / "bf16", **{"train.precision": "bf16"})
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)


def test_rmsprop_default_and_warmup_cosine_schedule(model_dir, hh_path, tmp_path):
    steps = run(model_dir, hh_path, tmp_path / "sched", **{"train.optimizer": "rmsprop", "train.warmup_steps": 2,
                                                           "train.schedule": "cosine", "train.max_steps": 4})
    cosine_half = 1e-3 * 0.5 * (1 + math.cos(math.pi / 2))
    assert [s["lr"] for s in steps] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, cosine_half])
    assert lr_factor(9, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert lr_factor(5, 10, 0, "constant") == 1.0


def test_unpaired_kto_and_ranked_plackett_luce_train(model_dir, tmp_path):
    kto = tmp_path / "kto.jsonl"
    kto.write_text("".join(json.dumps({"prompt": f"Q{i}:", "completion": f" answer {i}", "label": i % 2 == 0}) + "\n"
                           for i in range(8)))
    steps = run(model_dir, kto, tmp_path / "kto_run", **{"loss.name": "kto"})
    assert all(math.isfinite(s["loss"]) for s in steps) and "rewards/chosen" in steps[0]
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text("".join(json.dumps({"prompt": f"Q{i}:", "responses": [f" best {i}", f" ok {i}", f" bad {i}"]})
                              + "\n" for i in range(8)))
    steps = run(model_dir, ranked, tmp_path / "pl_run", **{"loss.name": "plackett_luce"})
    # K = 3 at πθ = πref: −Σ_k log(1/(K−k)) = log 3 + log 2
    assert steps[0]["loss"] == pytest.approx(math.log(3) + math.log(2), abs=1e-5)
    pairs = run(model_dir, ranked, tmp_path / "pairs_run", **{"loss.name": "sigmoid"})
    assert pairs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # ranked lists expanded into pairs
    assert torch.isfinite(torch.tensor([s["loss"] for s in pairs])).all()


def test_packed_shared_prompt_chunked_run_equals_plain_run(model_dir, hh_path, tmp_path):
    plain = run(model_dir, hh_path, tmp_path / "plain", **{"train.packing": False, "train.shared_prompt": False,
                                                            "train.logps_chunk_size": 0})
    fast = run(model_dir, hh_path, tmp_path / "fast", **{"train.logps_chunk_size": 33, "train.row_length": 200})
    same_curves(plain, fast, tol=1e-4)
    assert [s["tokens_per_s"] * s["step_time_s"] for s in plain] == pytest.approx(
        [s["tokens_per_s"] * s["step_time_s"] for s in fast])  # same logical tokens counted


def test_compiled_blocks_train_like_eager_ones(model_dir, hh_path, tmp_path):
    """train.compile=true (each block under torch.compile, inductor on CPU) against eager: the same curves over
    packed batches whose shapes change every step (so the dynamic-shape recompile is exercised), with a frozen-copy
    reference compiled too; dynamo's counters show that graphs were compiled, so the run was not silently eager."""
    from torch._dynamo.utils import counters

    eager = run(model_dir, hh_path, tmp_path / "eager", **{"train.max_steps": 4, "reference.mode": "copy"})
    counters.clear()
    compiled = run(model_dir, hh_path, tmp_path / "compiled", **{"train.max_steps": 4, "reference.mode": "copy",
                                                                 "train.compile": True})
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    same_curves(eager, compiled, tol=1e-5)


def test_compile_under_deepspeed_is_refused_before_loading():
    from dpokit.core.errors import ConfigError
    from dpokit.trainer.dist import Single
    from dpokit.trainer.run import refuse_compile

    class ZeroProcessGroup(Single):
        zero = object()  # as Parallel answers when accelerate's config asks for DeepSpeed

    with pytest.raises(ConfigError, match="train.compile=true is not supported under DeepSpeed"):
        refuse_compile(True, ZeroProcessGroup())
    refuse_compile(False, ZeroProcessGroup())  # off: nothing to refuse
