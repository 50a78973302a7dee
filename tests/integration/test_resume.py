"""Checkpoints and exact resume with a real SIGTERM to a real training process; non-finite steps stop cleanly."""

from __future__ import annotations

import json
import signal
import sys

import pytest
from interrupt import sigterm_after

from dpokit.cli import main
from dpokit.core.errors import DpokitError

DETERMINISTIC = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "grad_norm", "lr", "num_pairs")


def args(model_dir, hh_path, out, *extra):
    return ["train", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out), "--max-steps", "30",
            "--lr", "1e-3", "--batch-size", "4", "--max-length", "160", "data.limit=40", "data.on_bad_record=skip",
            "data.eval_fraction=0.2", "train.eval_every=10", "train.optimizer=adamw", "train.progress=false",
            "train.save=false", *extra]


def metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], {k: r[k] for k in DETERMINISTIC if k in r}) for r in rows]


def test_sigterm_then_resume_gives_the_uninterrupted_run_bit_for_bit(model_dir, hh_path, tmp_path):
    whole = tmp_path / "whole"
    assert main(args(model_dir, hh_path, whole)) == 0

    cut = tmp_path / "cut"
    code, err = sigterm_after([sys.executable, "-m", "dpokit", *args(model_dir, hh_path, cut)], cut)
    assert code == 128 + signal.SIGTERM, err
    assert "--resume" in err.strip().splitlines()[-1]
    done = len([m for m in metrics(cut) if m[1] == "train"])
    assert 3 <= done < 30  # really stopped mid-run
    assert len(list((cut / "checkpoints").glob("step-*"))) == 1

    assert main(args(model_dir, hh_path, cut, "--resume")) == 0
    assert metrics(cut) == metrics(whole)  # every figure identical: weights, optimizer, data order, RNG restored


def test_periodic_checkpoints_keep_the_newest(model_dir, hh_path, tmp_path):
    out = tmp_path / "run"
    assert main(args(model_dir, hh_path, out, "--max-steps", "7", "train.save_every=2",
                     "train.keep_checkpoints=2")) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
    assert main(args(model_dir, hh_path, out, "--max-steps", "7", "train.resume=" + str(
        out / "checkpoints" / "step-00000004"))) == 0
    assert [m[0] for m in metrics(out) if m[1] == "train"] == list(range(1, 8))


def test_resume_without_a_checkpoint_is_a_clear_error(model_dir, hh_path, tmp_path, capsys):
    assert main(args(model_dir, hh_path, tmp_path / "none", "--resume")) == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_non_finite_loss_stops_naming_the_step_and_pairs(model_dir, hh_path, tmp_path):
    out = tmp_path / "nan"
    from dpokit.core.settings import parse_overrides
    from dpokit.trainer.config import build_config
    from dpokit.trainer.loop import train

    overrides = parse_overrides(["data.limit=16", "data.on_bad_record=skip", "train.optimizer=adamw",
                                 "train.lr=1e20", "train.max_steps=5", "train.progress=false", "data.max_length=96"])
    cfg = build_config(None, {"model.name_or_path": str(model_dir), "data.path": str(hh_path),
                              "train.output_dir": str(out)}, overrides)
    with pytest.raises(DpokitError, match=r"step 2: non-finite loss") as err:
        train(cfg)
    saved = json.loads((out / "nonfinite-step-2.json").read_text())
    assert saved["step"] == 2 and len(saved["pairs"]) == 8
    assert all(p.startswith(str(hh_path) + ":") for p in saved["pairs"])
    assert saved["pairs"][0] in str(err.value)


def test_bco_running_delta_resumes_exactly(model_dir, hh_path, tmp_path):
    """bco_pair's δ (a running mean over every micro-batch so far) is saved in the checkpoint: resuming at step 4 of
    8 gives the unbroken run's δ, loss and rewards at every later step; a δ restarted from nothing would not."""
    out = tmp_path / "bco"
    run = args(model_dir, hh_path, out, "--max-steps", "8", "--loss", "bco_pair", "loss.bco_delta=running",
               "train.save_every=4", "train.eval_every=0", "train.grad_accum=2", "--batch-size", "2")
    assert main(run) == 0
    whole = metrics(out)
    deltas = [json.loads(line).get("running_mean/bco_pair") for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["split"] == "train"]
    assert all(d is not None for d in deltas) and len(set(deltas)) == len(deltas)  # reported, and moving
    state = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["loss_state"]["bco_pair"]["count"] == 4 * 2  # one per micro-batch: 4 steps of 2

    assert main([*run, "train.resume=" + str(out / "checkpoints" / "step-00000004")]) == 0
    resumed = [json.loads(line).get("running_mean/bco_pair") for line in (out / "metrics.jsonl").read_text()
               .splitlines() if json.loads(line)["split"] == "train"]
    assert metrics(out) == whole and resumed == deltas
