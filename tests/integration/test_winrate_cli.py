"""`dpokit winrate` end to end on tiny saved Llamas with a `file.py:function` reward as the judge: outputs, counts,
the win rates recomputed from the comparisons, determinism, a model baseline, agreement, and one-line errors."""

from __future__ import annotations

import gzip
import json
from itertools import islice

import pytest

import dpokit
from dpokit.cli import main
from dpokit.data.chat import hh_messages
from dpokit.eval.winrate import wilson

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REWARD = '''
def score(prompts, completions):
    """Letters "e", capped at 2: ties between the model and the baseline are common."""
    return [min(c.count("e"), 2) for c in completions]
'''


def score(text: str) -> int:
    return min(text.count("e"), 2)


@pytest.fixture
def inputs(tmp_path, hh_path):
    (tmp_path / "reward.py").write_text(REWARD)
    with gzip.open(hh_path, "rt", encoding="utf-8") as f:  # real HH records: chosen/rejected dialogues
        (tmp_path / "hh.jsonl").write_text("".join(islice(f, 5)))
    own = [{"prompt": "Where is the cat?", "chosen": "under the tree"},
           {"prompt": [{"role": "user", "content": "tell me a story"}], "chosen": "once upon a time"},
           {"prompt": "Say hello.", "chosen": [{"role": "assistant", "content": "hello there"}]}]
    (tmp_path / "ood.jsonl").write_text("".join(json.dumps(r) + "\n" for r in own))
    return tmp_path


def run(tmp, model_dir, other_model_dir, out, *extra):
    return main(["winrate", "--model", f"first={model_dir}", "--model", f"second={other_model_dir}",
                 "--prompts", str(tmp / "hh.jsonl"), "--prompts", f"ood={tmp / 'ood.jsonl'}",
                 "--judge", f"{tmp}/reward.py:score", "--temperatures", "0,1", "--num-samples", "3",
                 "--max-new-tokens", "6", "--output-dir", str(out), *extra])


def test_winrate_writes_results_that_the_comparisons_reproduce(model_dir, other_model_dir, inputs, capsys):
    out = inputs / "out"
    assert run(inputs, model_dir, other_model_dir, out, "--agreement", str(inputs / "hh.jsonl")) == 0
    summary = json.loads((out / "winrate.json").read_text())
    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    results = summary["results"]
    assert {(r["model"], r["prompt_set"], r["temperature"]) for r in results} == {
        (m, s, t) for m in ("first", "second") for s in ("hh", "ood") for t in (0.0, 1.0)}
    for result in results:
        mine = [r for r in rows if (r["model"], r["prompt_set"], r["temperature"]) ==
                (result["model"], result["prompt_set"], result["temperature"])]
        prompts = 5 if result["prompt_set"] == "hh" else 3
        assert result["n"] == len(mine) == prompts * (1 if result["temperature"] == 0 else 3)
        for r in mine:  # every verdict is the reward's, recomputed here
            m, b = score(r["completion"]), score(r["baseline"])
            assert r["verdict"] == ("model" if m > b else "baseline" if m < b else "tie")
            assert r["raw"] == {"model_reward": m, "baseline_reward": b}
        wins = sum(1.0 if r["verdict"] == "model" else 0.5 if r["verdict"] == "tie" else 0.0 for r in mine)
        assert result["win_rate"] == pytest.approx(wins / len(mine))
        assert result["ties"] == sum(r["verdict"] == "tie" for r in mine)
        assert result["ci95"] == pytest.approx(list(wilson(result["win_rate"], result["n"])))
    assert any(r["ties"] for r in results) and any(0 < r["win_rate"] < 1 for r in results)
    # the baseline is the records' own chosen response: HH's text after the last Assistant turn, a message's content
    ood = [r for r in rows if r["prompt_set"] == "ood" and r["model"] == "first" and r["temperature"] == 0]
    assert [r["baseline"] for r in ood] == ["under the tree", "once upon a time", "hello there"]
    hh = json.loads((inputs / "hh.jsonl").read_text().splitlines()[0])
    first_hh = next(r for r in rows if r["prompt_set"] == "hh")
    prefix, reply = hh["chosen"].rsplit("\n\nAssistant:", 1)
    assert first_hh["baseline"] == reply.strip()
    assert first_hh["prompt"] == hh_messages(prefix + "\n\nAssistant:")  # the tiny tokenizer has a chat template
    assert first_hh["prompt"][0] == {"role": "user", "content": prefix.split("Human:", 1)[1].split("\n\n")[0].strip()}
    # agreement: the chosen dialogue's reply vs the rejected one's, judged by the same reward
    pairs = [json.loads(line) for line in (inputs / "hh.jsonl").read_text().splitlines()]
    agree = [score(p["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()) for p in pairs]
    disagree = [score(p["rejected"].rsplit("\n\nAssistant:", 1)[1].strip()) for p in pairs]
    expected = sum(1.0 if a > d else 0.5 if a == d else 0.0 for a, d in zip(agree, disagree, strict=True)) / 5
    assert summary["agreement"]["agreement"] == pytest.approx(expected) and summary["agreement"]["n"] == 5
    assert (out / "winrate.png").stat().st_size > 10_000
    report = (out / "winrate.md").read_text()
    assert "| first | hh | 1 |" in report and "Judge agreement" in report
    assert "| second | ood | 0 |" in capsys.readouterr().out


def test_same_seed_same_comparisons_and_a_new_seed_new_samples(model_dir, other_model_dir, inputs):
    for name in ("a", "b"):
        assert run(inputs, model_dir, other_model_dir, inputs / name) == 0
    assert run(inputs, model_dir, other_model_dir, inputs / "c", "seed=7") == 0
    a, b, c = ((inputs / n / "comparisons.jsonl").read_text() for n in "abc")
    assert a == b
    assert a != c


def test_a_model_as_baseline_on_text_prompts(model_dir, other_model_dir, tmp_path):
    (tmp_path / "reward.py").write_text(REWARD)
    (tmp_path / "prompts.txt").write_text("Where is the cat?\nTell me a joke.\n")
    cfg = dpokit.WinrateConfig(models=[str(model_dir)], prompts=[str(tmp_path / "prompts.txt")],
                               baseline=str(other_model_dir), temperatures=[1.0], num_samples=2, max_new_tokens=6,
                               output_dir=str(tmp_path / "out"))
    cfg.judge.source = f"{tmp_path}/reward.py:score"
    result, paths = dpokit.winrate(cfg)
    drawn = dpokit.generate(str(other_model_dir), ["Where is the cat?", "Tell me a joke."], num_samples=2,
                            max_new_tokens=6, seed=1_000_003, batch_size=16)
    assert [j.comparison.baseline for j in result.comparisons] == [d["completion"] for d in drawn]
    own = dpokit.generate(str(model_dir), ["Where is the cat?", "Tell me a joke."], num_samples=2, max_new_tokens=6,
                          seed=0, batch_size=16)
    assert [j.comparison.completion for j in result.comparisons] == [d["completion"] for d in own]
    assert result.cells[0].rate.n == 4 and paths["winrate.json"].is_file()


@pytest.mark.parametrize(("extra", "message"), [
    (["--baseline", "answer"], "hh.jsonl:1: field 'answer': missing field"),
    (["--temperatures", "0,hot"], "--temperatures: expected numbers"),
    (["--temperatures", "-1"], "temperatures must be numbers >= 0"),
    (["--judge", "openai:"], "names no model"),
])
def test_bad_settings_fail_in_one_line(model_dir, other_model_dir, inputs, capsys, extra, message):
    assert run(inputs, model_dir, other_model_dir, inputs / "bad", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_flag_says_what_to_give(inputs, capsys):
    assert main(["winrate", "--prompts", str(inputs / "ood.jsonl"), "--output-dir", str(inputs / "x")]) == 2
    assert "no model to judge" in capsys.readouterr().err


def test_an_llm_judge_over_the_openai_api_both_orders_bias_and_cache(model_dir, tmp_path, capsys):
    from openai_server import OpenAIServer, always  # tests/openai_server.py: a real HTTP server on 127.0.0.1

    records = [{"prompt": f"Question {i}?", "chosen": f"answer {i}"} for i in range(3)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    argv = ["winrate", "--model", str(model_dir), "--prompts", str(tmp_path / "p.jsonl"), "--temperatures", "0,1",
            "--max-new-tokens", "5", "--judge", "openai:judge-model", "--output-dir", str(out)]
    with OpenAIServer(always("A")) as server:  # pure position bias: "A" whatever it is shown
        assert main([*argv, "--judge-base-url", server.url]) == 0
        asked = server.requests
        assert main([*argv, "--judge-base-url", server.url]) == 0  # the rerun reads the cache in out/
        assert server.requests == asked
    assert asked == 2 * 6  # 3 prompts x 2 temperatures, each in both orders
    summary = json.loads((out / "winrate.json").read_text())
    assert [(r["win_rate"], r["ties"], r["position_bias"]) for r in summary["results"]] == [(0.5, 3, 1.0)] * 2
    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    assert all([o["model_first"] for o in r["orders"]] == [True, False] for r in rows)
    assert all([o["p_model"] for o in r["orders"]] == [1.0, 0.0] and r["verdict"] == "tie" for r in rows)
    assert all(o["raw"].endswith("More helpful: A") for r in rows for o in r["orders"])
    assert "position bias" in (out / "winrate.md").read_text()
    assert (out / "judge_cache.jsonl").is_file()


def test_a_local_chat_model_as_judge(model_dir, other_model_dir, tmp_path):
    records = [{"prompt": f"Question {i}?", "chosen": f"answer {i}"} for i in range(3)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = dpokit.WinrateConfig(models=[str(model_dir)], prompts=[str(tmp_path / "p.jsonl")], temperatures=[1.0],
                               max_new_tokens=5, output_dir=str(tmp_path / "out"))
    cfg.judge.source = f"lm:{other_model_dir}"  # the tiny tokenizer has a chat template
    result, _ = dpokit.winrate(cfg)
    for judged in result.comparisons:
        first, second = judged.judgment.orders
        assert (first.model_first, second.model_first) == (True, False)
        assert 0 < first.p < 1 and 0 < second.p < 1
        mean = (first.p + second.p) / 2
        assert judged.judgment.verdict == ("model" if mean > 0.5 else "baseline" if mean < 0.5 else "tie")
    assert result.cells[0].position_bias is not None and result.judge.startswith("lm")


def test_win_rates_reach_tensorboard_at_step_100_times_temperature(model_dir, inputs):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = inputs / "tracked"
    assert main(["winrate", "--model", f"first={model_dir}", "--prompts", f"ood={inputs / 'ood.jsonl'}",
                 "--judge", f"{inputs}/reward.py:score", "--temperatures", "0,0.5", "--max-new-tokens", "4",
                 "--output-dir", str(out), "--agreement", str(inputs / "hh.jsonl"), "report_to=[tensorboard]",
                 "run_name=wr"]) == 0
    events = EventAccumulator(str(out / "tracking" / "tensorboard" / "wr"))
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    summary = json.loads((out / "winrate.json").read_text())
    expected = {("win_rate/first/ood", round(100 * r["temperature"])): r["win_rate"] for r in summary["results"]}
    expected[("judge/agreement", 0)] = summary["agreement"]["agreement"]
    assert {k: v for k, v in logged.items() if not k[0].startswith("win_rate_se")} == pytest.approx(expected)
