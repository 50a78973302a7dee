"""`dpokit bon` end to end on a tiny saved Llama with a `file.py:function` reward, and its one-line errors."""

from __future__ import annotations

import json
import re

import pytest

import dpokit
from dpokit.cli import main
from dpokit.core.settings import describe_keys
from dpokit.rlhf.bon import analytic_kl
from dpokit.rlhf.bon_config import BonConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

REWARD = '''
def score(prompts, completions):
    """Letters "e" minus a length penalty: ties are common, so the tie-break is exercised too."""
    return [c.count("e") - (len(c) > 12) for c in completions]
'''


def score(completions: list[str]) -> list[int]:
    return [c.count("e") - (len(c) > 12) for c in completions]


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "reward.py").write_text(REWARD)
    prompts = [{"prompt": "Human: hello there"}, {"prompt": "Where is the cat?"},
               {"prompt": [{"role": "user", "content": "tell me a story"}]}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return tmp_path, [p["prompt"] for p in prompts]


def test_bon_writes_every_sample_with_its_reward_and_the_first_best(model_dir, inputs, capsys):
    tmp, prompts = inputs
    out = tmp / "bon.jsonl"
    code = main(["bon", "--model", str(model_dir), "--prompts", str(tmp / "prompts.jsonl"), "--n", "6",
                 "--reward", f"{tmp}/reward.py:score", "--max-new-tokens", "8", "--output", str(out),
                 "batch_size=5"])
    summary = capsys.readouterr().out
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for row in rows:
        texts = [s["completion"] for s in row["samples"]]
        rewards = [s["reward"] for s in row["samples"]]
        assert len(texts) == 6 and rewards == score(texts)
        assert row["best"] == rewards.index(max(rewards))  # ties: the earliest sample
        assert (row["completion"], row["reward"]) == (texts[row["best"]], max(rewards))
    # the samples are πref's own draw: dpokit generate, same seed and batching (the chat template is applied to both)
    drawn = dpokit.generate(str(model_dir), prompts, num_samples=6, max_new_tokens=8, seed=0, batch_size=5)
    assert [s["completion"] for r in rows for s in r["samples"]] == [d["completion"] for d in drawn]
    best = sum(r["reward"] for r in rows) / 3
    mean = sum(s["reward"] for r in rows for s in r["samples"]) / 18
    numbers = re.search(r"best ([-+.\d]+) vs mean of all samples ([-+.\d]+).* = ([.\d]+) nats", summary)
    assert numbers, summary
    assert [float(x) for x in numbers.groups()] == pytest.approx([best, mean, analytic_kl(6)], abs=1e-4)


def test_bon_prints_the_jsonl_without_output_and_is_seeded(model_dir, inputs, capsys):
    tmp, _ = inputs
    args = ["bon", "--model", str(model_dir), "--prompts", str(tmp / "prompts.jsonl"), "--n", "3",
            "--reward", f"{tmp}/reward.py:score", "--max-new-tokens", "5", "--seed", "7"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == first.out
    rows = [json.loads(line) for line in first.out.splitlines()]
    assert len(rows) == 3 and all(len(r["samples"]) == 3 for r in rows)
    assert "best-of-3 over 3 prompts" in first.err  # the summary goes to stderr, so stdout is pure JSONL


@pytest.mark.parametrize(("line", "field"), [('{"prompt": ""}', "prompt"), ('{"text": "hi"}', "prompt"),
                                             ('{"prompt": [{"role": "user"}]}', "prompt[0]")])
def test_a_bad_prompts_file_names_file_line_and_field(model_dir, tmp_path, capsys, line, field):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "fine"}\n' + line + "\n")
    code = main(["bon", "--model", str(model_dir), "--prompts", str(prompts), "--reward", "no_such_module:f"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"dpokit: error: {prompts}:2: field '{field}'")  # before the reward loads


@pytest.mark.parametrize(("extra", "message"), [
    (["nn=3"], "unknown config key 'nn' (did you mean 'n'?)"),
    (["reward.sorce=vader"], "unknown config key 'reward.sorce' (did you mean 'reward.source'?)"),
    (["--reward-text", "both"], "config key 'reward.text' must be one of"),
    (["--n", "0"], "config key 'n' must be > 0, got 0"),
    (["temperature=0"], "config key 'temperature' must be > 0"),
    (["chat=maybe"], "config key 'chat' must be bool or null"),
    (["--reward", "missing.py:score"], "reward 'missing.py:score': file not found: missing.py"),
    (["--model", "no/such/dir/"], "config key 'model': no such directory: no/such/dir/"),
])
def test_bad_keys_fail_in_one_line(model_dir, inputs, capsys, extra, message):
    tmp, _ = inputs
    code = main(["bon", "--model", str(model_dir), "--prompts", str(tmp / "prompts.jsonl"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("dpokit: error: ") and message in err


def test_a_bad_yaml_key_names_the_file(inputs, capsys):
    tmp, _ = inputs
    (tmp / "bon.yaml").write_text("n: 4\nreward:\n  source: vader\n  labl: POSITIVE\n")
    assert main(["bon", "--config", str(tmp / "bon.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpokit: error: {tmp / 'bon.yaml'}: unknown config key 'reward.labl'")


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bon", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for line in describe_keys(BonConfig).splitlines():
        key, _, help_text = line.split(None, 2)
        assert f"\n  {key} " in out and help_text in out  # the key's line, its help unwrapped
    assert "--reward-label" in out and "--max-new-tokens" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Best-of-N" in capsys.readouterr().out
