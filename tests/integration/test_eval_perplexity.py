"""`dpokit eval --perplexity` on tiny saved models: before (reference) and after (policy) on held-out text."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpokit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = ["Human: what is a cat?", "Assistant: a small animal that sleeps a lot, purrs, and chases mice at night."]


def plain_nll(model_dir, texts: list[str]) -> tuple[float, int]:
    """Independent of dpokit: [eos] + ids(text) + [eos] per document, one unpadded forward each, token-weighted."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"],
                             tokenizer.eos_token_id]])
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total / count, count


def test_eval_reports_perplexity_before_and_after(model_dir, other_model_dir, hh_path, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text(DOCS[0] + "\n\n" + DOCS[1] + "\n")
    out = tmp_path / "eval.json"
    code = main(["eval", "--policy", str(model_dir), "--reference", str(other_model_dir), "--perplexity", str(held),
                 "--perplexity", str(hh_path), "--perplexity-field", "chosen", "--perplexity-limit", "3",
                 "--max-length", "64", "--batch-size", "2", "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"perplexity"}  # no --data: no preference metrics
    report = result["perplexity"]
    assert report["models"] == {"reference": str(other_model_dir), "policy": str(model_dir)}
    assert report["baseline"] == "reference" and report["settings"]["max_length"] == 64
    txt, hh = report["sources"]
    assert (txt["source"], txt["field"], txt["documents"]) == (str(held), None, 2)
    assert (hh["source"], hh["field"], hh["documents"]) == (str(hh_path), "chosen", 3)
    for name, directory in (("reference", other_model_dir), ("policy", model_dir)):
        nll, tokens = plain_nll(directory, DOCS)
        got = txt["results"][name]
        assert got["tokens"] == tokens and got["windowed"] == 0
        assert got["nll"] == pytest.approx(nll, rel=1e-5)
        assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    for source in (txt, hh):
        before, after = source["results"]["reference"], source["results"]["policy"]
        change = source["change"]["policy"]
        assert change["nll"] == pytest.approx(after["nll"] - before["nll"])
        assert change["perplexity_ratio"] == pytest.approx(after["perplexity"] / before["perplexity"])
        assert before["nll"] != after["nll"]  # two different random models
    assert hh["results"]["policy"]["windowed"] >= 1  # HH dialogues are longer than 64 tokens
    err = capsys.readouterr().err
    assert f"perplexity on {held} (2 documents; before = reference)" in err
    assert f"change: nll {txt['change']['policy']['nll']:+.4f}" in err


def test_eval_with_data_and_perplexity_reports_both(model_dir, hh_path, tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--policy", str(model_dir), "--reference", str(model_dir), "--data", str(hh_path),
                 "--perplexity", str(hh_path), "--perplexity-field", "rejected", "--perplexity-limit", "2",
                 "--max-length", "128", "--output", str(out), "data.limit=4", "data.on_bad_record=skip"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 4 and result["loss"] == pytest.approx(math.log(2), abs=1e-6)
    source = result["perplexity"]["sources"][0]
    assert source["change"]["policy"]["nll"] == 0.0  # the same weights before and after


def test_eval_without_a_reference_scores_the_policy_only(model_dir, tmp_path):
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"text": DOCS[1]}) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--policy", str(model_dir), "--perplexity", str(held), "--output", str(out)]) == 0
    source = json.loads(out.read_text())["perplexity"]["sources"][0]
    assert list(source["results"]) == ["policy"] and source["change"] == {}
    assert source["results"]["policy"]["nll"] == pytest.approx(plain_nll(model_dir, DOCS[1:])[0], rel=1e-5)


def test_eval_needs_data_or_perplexity_and_names_bad_text(model_dir, tmp_path, capsys):
    assert main(["eval", "--policy", str(model_dir)]) == 2
    assert "nothing to evaluate: give --data" in capsys.readouterr().err
    held = tmp_path / "held.jsonl"
    held.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    assert main(["eval", "--policy", str(model_dir), "--perplexity", str(held)]) == 2
    assert f"{held}:2: field 'text': missing field" in capsys.readouterr().err  # before any model loads
    assert main(["eval", "--policy", str(tmp_path / "not-there"), "--perplexity", str(held)]) == 2
    assert "config key 'model.name_or_path': no such directory" in capsys.readouterr().err  # settings first
