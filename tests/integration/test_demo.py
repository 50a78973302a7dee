"""The demo pipeline end to end at a tiny size (corpus -> SFT -> preferences -> 4 losses, a learned reward model,
PPO, PPO-GT and Best-of-N -> report), then the
`frontier` and `generate` commands on the model it built. Asserts what the outputs must satisfy, not just that
they exist: πref's KL to itself is exactly 0, its reported reward is reproduced by sampling again and re-scoring,
every evaluation of every run is in the CSV, the report's table and the preference files agree with the result."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.core.sections import ModelConfig, SamplingSettings
from dpokit.experiments.demo import TINY, run_demo
from dpokit.experiments.frontier import EVAL_SEED_OFFSET
from dpokit.experiments.frontier_config import KINDS
from dpokit.lm.sampling import sample
from dpokit.models.loading import load_model, load_tokenizer
from dpokit.rewards.sources import load_reward
from dpokit.rlhf.bon import analytic_kl

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(str(out), size="tiny", seed=0)


def test_outputs_are_written(demo):
    out, result = demo
    for name in ("frontier.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "## What the runs show" in report and "![reward vs KL](frontier.png)" in report
    for run in result.runs:
        assert f"| {run.method.label} | {run.method.setting} | {run.steps} |" in report
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == len(TINY.methods) and results["verdict"]


def test_reference_kl_to_itself_is_zero(demo):
    _, result = demo
    assert result.reference.kl == 0.0
    assert all(k == 0.0 for k in result.reference.kls)


def test_reference_reward_matches_a_recomputation(demo):
    """Sample πref again from disk with the evaluation seed, re-score with VADER: same completions, same mean."""
    out, result = demo
    model = load_model(str(out / "sft"), ModelConfig())
    tokenizer = load_tokenizer(str(out / "sft"))
    cfg = result.config
    settings = SamplingSettings(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.sample_batch_size)
    again = sample(model, tokenizer, cfg.eval_prompts, settings, seed=cfg.seed + EVAL_SEED_OFFSET,
                   num_samples=cfg.eval_samples_per_prompt)
    assert again.completions == result.reference.samples.completions
    scores = load_reward("vader")(again.prompts, again.completions)
    assert sum(scores) / len(scores) == pytest.approx(result.reference.reward, abs=1e-9)


def test_every_kind_of_method_ran_and_is_reported(demo):
    """Each kind has its points, its final.csv row, its place in the report's table and verdicts."""
    out, result = demo
    assert {run.method.kind for run in result.runs} == set(KINDS)
    with (out / "final.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["setting"], r["kind"]) for r in rows[1:]] == [
        (run.method.label, run.method.setting, run.method.kind) for run in result.runs]
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    for label in ("PPO", "PPO-GT", "Best-of-N"):
        assert any(v.startswith("DPO's frontier ") and v.split(": ")[0].endswith(f" {label}")
                   for v in results["verdict"]), label
        assert f"DPO's frontier dominates {label}:" in report or f"does NOT dominate {label}:" in report
    assert "no curve" in report and "held out of its training" in report


def test_ppo_arms_are_evaluated_like_the_losses(demo):
    """PPO and PPO-GT: an evaluation every ppo_eval_every iterations on the same held-out draw, logged by the PPO
    run's callback; the learned arm optimised the reward model saved under reward_model/."""
    out, result = demo
    ppo_runs = [run for run in result.runs if run.method.kind == "ppo"]
    assert {run.method.reward for run in ppo_runs} == {"learned", "ground_truth"}
    for run in ppo_runs:
        assert [p.step for p in run.points] == list(range(TINY.ppo_eval_every, TINY.ppo_iterations + 1,
                                                          TINY.ppo_eval_every))
        assert run.steps == TINY.ppo_iterations and run.points[-1].kl > 0
        logged = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
        assert [r["gt_reward"] for r in logged if r.get("split") == "callback"] == [p.reward for p in run.points]
        assert len([r for r in logged if "split" not in r]) == TINY.ppo_iterations
    rm = result.reward_model
    assert rm is not None and (out / "reward_model" / "config.json").is_file() and 0 <= rm.accuracy <= 1
    assert rm.eval_pairs > 0 and rm.train_pairs + rm.eval_pairs == result.preferences.pairs


def test_online_dpo_spends_the_offline_runs_reward_calls_and_steps(demo):
    """The online arm: the training prompts split over its rounds (K calls each), max_steps split over them, its
    policy evaluated after every round; each round's data on disk; the budget in the report."""
    out, result = demo
    (online,) = [run for run in result.runs if run.method.kind == "online"]
    offline = next(run for run in result.runs if run.method.kind == "loss")
    rounds = [json.loads(line) for line in (Path(online.run_dir) / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == TINY.online_rounds
    k, prompts = result.config.samples_per_prompt, len(result.config.train_prompts)
    assert online.label_calls == rounds[-1]["label_calls"] == k * prompts == offline.label_calls
    trained = [r for r in rounds if r["trained"]]
    assert online.steps == len(trained) * (TINY.method_steps // TINY.online_rounds)
    assert len(online.points) == len(trained) and all(p.kl >= 0 for p in online.points)
    assert all((Path(online.run_dir) / f"round_{r['round']}.jsonl").is_file() for r in rounds)
    assert f"Reward calls: Online DPO {online.label_calls} (the offline runs' preference data: {k * prompts})" in (
        out / "report.md").read_text()


def test_best_of_n_is_the_ground_truth_of_the_learned_models_pick(demo):
    """Re-select from the saved draw: the best of the first N by the learned reward, re-scored by VADER."""
    out, result = demo
    rows = [json.loads(line) for line in (out / "data" / "bon_learned.jsonl").read_text().splitlines()]
    vader = load_reward("vader")
    for run in (r for r in result.runs if r.method.kind == "bon"):
        n = run.method.n
        picks = [row["samples"][max(range(n), key=lambda i: (row["samples"][i]["reward"], -i))] for row in rows]
        truth = vader([row["prompt"] for row in rows], [p["completion"] for p in picks])
        assert run.final.samples.completions == [p["completion"] for p in picks]
        assert run.points[-1].reward == pytest.approx(sum(truth) / len(truth), abs=1e-12)
        assert run.points[-1].kl == analytic_kl(n) and run.steps == 0


def test_every_evaluation_is_recorded(demo):
    out, result = demo
    with (out / "points.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 + sum(len(run.points) for run in result.runs)
    for run in (r for r in result.runs if r.method.kind == "loss"):
        assert [p.step for p in run.points] == [TINY.eval_every * (i + 1) for i in range(len(run.points))]
        assert run.points[-1].step == TINY.method_steps
        logged = [json.loads(line) for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()]
        callbacks = [r for r in logged if r["split"] == "callback"]
        assert [r["gt_reward"] for r in callbacks] == [p.reward for p in run.points]
        assert run.points[-1].kl > 0  # the callback saw the trained policy, not πref


def test_preference_files_follow_the_recipe(demo):
    out, result = demo
    ranked = [json.loads(line) for line in (out / "data" / "ranked.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "data" / "pairs.jsonl").read_text().splitlines()]
    stats = result.preferences
    assert len(ranked) == stats.kept_prompts and len(pairs) == stats.pairs
    assert stats.pairs + stats.tied_pairs == 6 * stats.kept_prompts
    for record in ranked:
        assert len(record["responses"]) == 4 == len(set(record["responses"]))
    scores = {(r["prompt"], text): s for r in ranked for text, s in zip(r["responses"], r["scores"], strict=True)}
    assert all(scores[(p["prompt"], p["chosen"])] > scores[(p["prompt"], p["rejected"])] for p in pairs)


def test_frontier_and_generate_commands(demo, tmp_path, capsys):
    out, _ = demo
    reward_file = tmp_path / "length_reward.py"
    reward_file.write_text("def score(prompts, completions):\n    return [len(c.split()) / 10 for c in completions]\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["the acting was", "i saw it", "what a", "the plot is", "it is a", "the music"]))
    config = tmp_path / "frontier.yaml"
    config.write_text(
        f"model: {out / 'sft'}\nprompts: {prompts}\neval_fraction: 0.34\nreward: {reward_file}:score\n"
        "max_new_tokens: 6\nrun: {train: {max_steps: 2, eval_every: 1, batch_size: 2, lr: 1.0e-3, progress: false}}\n"
        "methods:\n  - {label: DPO, loss: sigmoid, beta: 0.1}\n  - {label: Preferred-FT, loss: sft}\n"
    )
    assert main(["frontier", "--config", str(config), "--output-dir", str(tmp_path / "fr")]) == 0
    assert (tmp_path / "fr" / "frontier.png").read_bytes()[:8] == PNG
    assert "DPO" in capsys.readouterr().out

    code = main(["generate", "--model", str(out / "sft"), "--prompt", "the acting was", "--num-samples", "2",
                 "--max-new-tokens", "5", "--seed", "1"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(lines) == 2 and all(r["prompt"] == "the acting was" for r in lines)


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("model: x\nprompts: p.txt\ncolour: red\n", "f.yaml: unknown config key 'colour'"),
    ("prompts: p.txt\n", "'model' is required"),
    ("model: x\nprompts: missing.txt\n", "missing.txt: no such file"),
])
def test_bad_frontier_config_is_one_line(tmp_path, capsys, monkeypatch, yaml_text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("a prompt\n")
    (tmp_path / "f.yaml").write_text(yaml_text)
    assert main(["frontier", "--config", "f.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
