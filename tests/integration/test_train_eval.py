"""End to end on real Anthropic HH pairs with a tiny random Llama: training learns, eval matches plain math."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpokit.cli import main

MARKER = "\n\nAssistant:"


def read_metrics(run_dir, split="train"):
    lines = (json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    return [m for m in lines if m["split"] == split]


def test_dpo_on_hh_learns_the_training_pairs(model_dir, hh_path, tmp_path):
    """64 HH pairs, 5 epochs: the loss starts at ln 2 (policy == reference) and falls; accuracy rises."""
    out = tmp_path / "run"
    code = main(["train", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out),
                 "--max-steps", "40", "--lr", "1e-3", "--batch-size", "8", "--max-length", "192",
                 "data.limit=64", "data.on_bad_record=skip", "train.optimizer=adamw", "train.progress=false",
                 "data.eval_fraction=0.125", "train.eval_every=20"])
    assert code == 0
    steps = read_metrics(out)
    assert len(steps) == 40
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    first = sum(s["loss"] for s in steps[:5]) / 5
    last = sum(s["loss"] for s in steps[-5:]) / 5
    assert last < first - 0.1
    acc_first = sum(s["rewards/accuracies"] for s in steps[:5]) / 5
    acc_last = sum(s["rewards/accuracies"] for s in steps[-5:]) / 5
    assert acc_last > acc_first + 0.2 and acc_last > 0.8
    assert {"grad_norm", "lr", "step_time_s", "pairs_per_s", "tokens_per_s"} <= set(steps[-1])
    evals = read_metrics(out, "eval")
    assert [e["step"] for e in evals] == [20, 40] and evals[0]["num_pairs"] == 8
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "config.yaml").is_file() and json.loads((out / "summary.json").read_text())["steps"] == 40


def test_eval_of_a_policy_against_itself_is_ln2(model_dir, hh_path, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(["eval", "--policy", str(model_dir), "--reference", str(model_dir), "--data", str(hh_path),
                 "--max-length", "256", "--output", str(out), "data.limit=24", "data.on_bad_record=skip"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 24
    assert result["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def _plain_pair_logps(model, tokenizer, prompt: str, response: str) -> float:
    """Independent of dpokit: ids(prompt) + ids(response) + [eos], one unpadded row, response tokens summed."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    n = len(prompt_ids)
    return sum(logp[n - 1 + i, t].item() for i, t in enumerate(response_ids))


def test_eval_matches_an_independent_transformers_computation(model_dir, other_model_dir, hh_path, tmp_path):
    """Policy and reference differ; every figure of `dpokit eval` agrees with plain math within 1e-4."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(other_model_dir).eval()
    pairs = []
    with gzip.open(hh_path, "rt") as f:
        for line in f:
            row = json.loads(line)
            cut = row["chosen"].rfind(MARKER) + len(MARKER)
            prompt = row["chosen"][:cut]
            if row["rejected"][:cut] != prompt or len(tokenizer(row["chosen"] + row["rejected"])["input_ids"]) > 500:
                continue
            pairs.append((prompt, row["chosen"][cut:], row["rejected"][cut:]))
            if len(pairs) == 12:
                break
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in pairs))
    out = tmp_path / "eval.json"
    beta = 0.25
    assert main(["eval", "--policy", str(model_dir), "--reference", str(other_model_dir), "--data", str(data),
                 "--beta", str(beta), "--max-length", "1024", "--batch-size", "5", "--output", str(out)]) == 0
    got = json.loads(out.read_text())

    rows = []
    for prompt, chosen, rejected in pairs:
        pc, pr = (_plain_pair_logps(policy, tokenizer, prompt, r) for r in (chosen, rejected))
        rc, rr = (_plain_pair_logps(reference, tokenizer, prompt, r) for r in (chosen, rejected))
        rw, rl = beta * (pc - rc), beta * (pr - rr)
        rows.append({"loss": -math.log(1 / (1 + math.exp(-(rw - rl)))), "rewards/chosen": rw, "rewards/rejected": rl,
                     "rewards/accuracies": float(rw > rl), "rewards/margins": rw - rl,
                     "logps/chosen": pc, "logps/rejected": pr})
    assert got["num_pairs"] == len(pairs)
    for key in rows[0]:
        expected = sum(r[key] for r in rows) / len(rows)
        assert got[key] == pytest.approx(expected, abs=1e-4, rel=1e-6), key
    assert 0 < got["rewards/accuracies"] < 1  # the two random models really disagree pair by pair


def test_sft_trains_on_chosen_without_a_reference(model_dir, hh_path, tmp_path):
    out = tmp_path / "sft"
    code = main(["sft", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out),
                 "--max-steps", "12", "--lr", "3e-3", "--max-length", "128", "data.limit=16",
                 "train.optimizer=adamw", "train.progress=false", "train.save=false"])
    assert code == 0
    steps = read_metrics(out)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5  # per-token NLL of the chosen responses
    assert "rewards/rejected" not in steps[0]  # only the chosen response was computed
