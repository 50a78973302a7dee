"""Two real processes (torchrun, gloo on CPU): gradients are all-reduced, and the run equals one process that
accumulates the same global batch (the bug TRL shipped as issue #7245 would fail both checks)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from dpokit.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def common(model_dir, hh_path, out):
    return ["train", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out), "--max-steps", "5",
            "--lr", "1e-3", "--batch-size", "3", "--max-length", "128", "data.limit=40", "data.on_bad_record=skip",
            "data.eval_fraction=0.2", "train.optimizer=adamw", "train.progress=false"]


MODES = {
    "ddp": [],
    # sharded weights, gradients and optimizer state; the reference must be cached (a copy would be unsharded)
    "fsdp": ["train.fsdp=true", "reference.mode=precomputed"],
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_processes_equal_one_process_with_accumulation(model_dir, hh_path, tmp_path, mode):
    extra = [*MODES[mode], f"reference.cache_dir={tmp_path / 'cache'}"]
    two = tmp_path / mode
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
              "--master_port", str(free_port()), "-m", "dpokit", *common(model_dir, hh_path, two), *extra]
    done = subprocess.run(launch, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2
    if mode == "ddp":
        digests = summary["replica_digests"]
        assert len(digests) == 2 and digests[0] == digests[1]  # (a) both ranks hold identical parameters
    else:
        assert summary["sharded"] is True  # each rank held half: the gathered model is compared below

    one = tmp_path / "single"
    single_extra = [e for e in extra if not e.startswith("train.fsdp")]
    assert main([*common(model_dir, hh_path, one), "train.grad_accum=2", *single_extra]) == 0
    a, b = load_file(str(two / "model.safetensors")), load_file(str(one / "model.safetensors"))
    assert set(a) == set(b)
    for name in a:  # (b) the same model as one process at the same global batch
        assert (a[name] - b[name]).abs().max().item() <= 1e-5, name
    assert (a["model.embed_tokens.weight"] - load_file(str(model_dir / "model.safetensors"))[
        "model.embed_tokens.weight"]).abs().max() > 1e-4  # and training really moved the weights

    def rows(path):
        return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]

    for x, y in zip(rows(two), rows(one), strict=True):
        assert (x["step"], x["split"]) == (y["step"], y["split"])
        for key in ("loss", "rewards/margins", "grad_norm", "num_pairs"):
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), key
