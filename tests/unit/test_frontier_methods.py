"""The frontier's method kinds (loss, ppo, bon, online): what each requires, how the YAML spells them, that one table
dispatches them, the PPO settings a method gets, and the learned reward model's split of the pairs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dpokit.core.errors import ConfigError
from dpokit.experiments import frontier
from dpokit.experiments.frontier_config import KINDS, FrontierConfig, MethodSpec, load_frontier_config, rlhf_methods
from dpokit.experiments.frontier_rlhf import ppo_config, split_pairs


def experiment(*methods: MethodSpec, **kwargs) -> FrontierConfig:
    return FrontierConfig(model="m", train_prompts=["a", "b"], eval_prompts=["c"], methods=list(methods), **kwargs)


def test_the_rlhf_arms_are_valid_methods_of_their_kinds():
    methods = rlhf_methods(ppo_betas=(0.05, 0.2), ns=(4, 16))
    experiment(MethodSpec("DPO", "sigmoid", beta=0.1), *methods).check()
    assert [(m.label, m.kind, m.reward, m.setting) for m in methods] == [
        ("PPO", "ppo", "learned", "β=0.05"), ("PPO", "ppo", "learned", "β=0.2"),
        ("PPO-GT", "ppo", "ground_truth", "β=0.05"), ("PPO-GT", "ppo", "ground_truth", "β=0.2"),
        ("Best-of-N", "bon", "learned", "N=4"), ("Best-of-N", "bon", "learned", "N=16")]
    assert [m.slug for m in methods[-2:]] == ["best-of-n-n4", "best-of-n-n16"]


@pytest.mark.parametrize(("method", "message"), [
    (MethodSpec("DPO", ""), "'methods[0].loss': a loss method needs a loss"),
    (MethodSpec("DPO", "sigmoid", reward="learned"), "'methods[0].reward': a loss method takes no reward"),
    (MethodSpec("DPO", "sigmoid", n=4), "'methods[0].n': a loss method takes no n"),
    (MethodSpec("PPO", "sigmoid", kind="ppo", reward="learned"), "'methods[0].loss': a ppo method takes no loss"),
    (MethodSpec("PPO", kind="ppo"), "'methods[0].reward': a ppo method needs reward: learned or ground_truth"),
    (MethodSpec("PPO", kind="ppo", reward="vader"), "'methods[0].reward': a ppo method needs reward"),
    (MethodSpec("PPO", kind="ppo", reward="learned", alpha=1.0), "'methods[0].alpha': a ppo method takes no alpha"),
    (MethodSpec("BoN", kind="bon", reward="learned"), "'methods[0].n': Best-of-N needs n >= 1, got None"),
    (MethodSpec("BoN", kind="bon", reward="learned", n=0), "'methods[0].n': Best-of-N needs n >= 1, got 0"),
    (MethodSpec("BoN", kind="bon", reward="learned", n=4, beta=0.1), "it takes no beta or run"),
    (MethodSpec("X", "sigmoid", kind="dpo"), "'methods[0].kind' must be one of loss, ppo, bon, online; got 'dpo'"),
])
def test_each_kind_refuses_what_it_does_not_take(method: MethodSpec, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        experiment(method).check()


def test_the_yaml_spells_kinds_with_the_same_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    Path("p.txt").write_text("\n".join(f"prompt {i}" for i in range(5)) + "\n")
    Path("f.yaml").write_text(
        "model: m\nprompts: p.txt\nppo: {iterations: 3}\nrm: {train: {lr: 1.0e-3}}\nmethods:\n"
        "  - {label: PPO, kind: ppo, reward: learned, beta: 0.2}\n  - {label: BoN, kind: bon, reward: learned, n: 8}\n")
    cfg = load_frontier_config("f.yaml").experiment()
    assert cfg.methods == [MethodSpec("PPO", kind="ppo", reward="learned", beta=0.2),
                           MethodSpec("BoN", kind="bon", reward="learned", n=8)]
    assert (cfg.ppo, cfg.rm) == ({"iterations": 3}, {"train.lr": 1e-3})
    Path("f.yaml").write_text("model: m\nprompts: p.txt\nmethods:\n  - {label: X, kind: rl, reward: learned}\n")
    refused = "'methods[0].kind' must be one of loss, ppo, bon, online; got 'rl'"
    with pytest.raises(ConfigError, match=re.escape(refused)):
        load_frontier_config("f.yaml")


def test_one_table_dispatches_every_kind(monkeypatch: pytest.MonkeyPatch):
    """check_methods (and run_frontier's loop) look the runner up by the method's kind: each method reaches its own."""
    assert set(frontier.RUNNERS) == set(KINDS)
    seen: list[tuple[str, str]] = []
    for kind in KINDS:
        monkeypatch.setitem(frontier.RUNNERS, kind, frontier.Runner(
            lambda cfg, m, files, kind=kind: seen.append((kind, m.label)), frontier.RUNNERS[kind].run))
    frontier.check_methods(experiment(MethodSpec("DPO", "sigmoid"), *rlhf_methods(ns=(2,))))
    assert seen == [("loss", "DPO"), ("ppo", "PPO"), ("ppo", "PPO-GT"), ("bon", "Best-of-N")]


def test_a_ppo_method_gets_the_frontier_settings_then_shared_then_its_own(tmp_path: Path):
    cfg = experiment(output_dir=str(tmp_path), max_new_tokens=7, seed=3, ppo={"iterations": 5, "lr": 1e-3, "beta": 1.0})
    method = MethodSpec("PPO", kind="ppo", reward="learned", beta=0.2, run={"lr": 2e-3})
    ppo = ppo_config(cfg, method, "prompts.jsonl", chat=False)
    assert (ppo.model.name_or_path, ppo.prompts, ppo.max_new_tokens, ppo.seed, ppo.chat) == ("m", "prompts.jsonl", 7, 3,
                                                                                             False)
    assert (ppo.iterations, ppo.lr, ppo.beta) == (5, 2e-3, 0.2)  # shared < the method's run < the method's beta
    assert ppo.output_dir == str(tmp_path / "runs" / "ppo-beta0.2")
    with pytest.raises(ConfigError, match="ppo: max_new_tokens, seed come"):
        ppo_config(experiment(ppo={"seed": 1, "max_new_tokens": 4}), method, "p", chat=False)
    with pytest.raises(ConfigError, match="unknown config key 'iters'"):
        frontier.check_methods(experiment(MethodSpec("PPO", kind="ppo", reward="learned", run={"iters": 3})))


def test_the_reward_model_holds_out_whole_prompts(tmp_path: Path):
    pairs = [{"prompt": f"p{i % 10}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    counts = split_pairs(tmp_path / "pairs.jsonl", tmp_path / "t.jsonl", tmp_path / "e.jsonl", 0.2, seed=0)
    train = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert counts == {"train_pairs": 32, "eval_pairs": 8, "eval_prompts": 2}
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, pairs))


def test_an_online_method_gets_the_offline_budget_and_the_frontiers_own_keys():
    """8 training prompts over 4 rounds: 2 new prompts a round (K x 8 reward calls in all, the offline data's);
    train.max_steps 40 over 4 rounds: 10 steps a round; the shared run's training keys carry over, eval_every not."""
    from dpokit.experiments.frontier_online import online_config

    method = MethodSpec("Online DPO", "sigmoid", kind="online", reward="ground_truth", beta=0.3)
    cfg = FrontierConfig(model="m", train_prompts=list("abcdefgh"), eval_prompts=["z"], methods=[method],
                         run={"train.max_steps": 40, "train.lr": 1e-3, "train.eval_every": 5, "data.max_length": 64},
                         online={"rounds": 4}, samples_per_prompt=3, max_new_tokens=7)
    cfg.check()
    online = online_config(cfg, method, "p.jsonl", None)
    assert (online.rounds, online.prompts_per_round, online.steps_per_round) == (4, 2, 10)
    assert (online.samples_per_prompt, online.max_new_tokens, online.max_length) == (3, 7, 64)
    assert (online.train.lr, online.loss.name, online.loss.beta, online.reward.source) == (1e-3, "sigmoid", 0.3,
                                                                                          "vader")
    assert online.train.eval_every == 0  # rounds are evaluated by the frontier itself
    with pytest.raises(ConfigError, match="samples_per_prompt come"):
        online_config(experiment(method, online={"samples_per_prompt": 2}), method, "p.jsonl", None)
    with pytest.raises(ConfigError, match="'methods\\[0\\].reward': a online method needs reward"):
        experiment(MethodSpec("Online DPO", "sigmoid", kind="online")).check()
