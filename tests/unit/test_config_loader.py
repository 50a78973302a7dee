"""One config system for every command: help from field metadata, the same key and type checks for the frontier YAML
(lists of dataclasses included) as for the train config, and each loss hyper-parameter defined once."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import dpokit.core.settings
import dpokit.losses.objective
import dpokit.trainer.config
from dpokit.cli import TRAIN_FLAGS, build_parser, frontier_yaml_help, main
from dpokit.core.errors import ConfigError
from dpokit.core.settings import describe_keys, field_of, load, setting, validate
from dpokit.experiments.frontier import method_config
from dpokit.experiments.frontier_config import FrontierConfig, FrontierFile, MethodSpec, load_frontier_config
from dpokit.losses import LOSSES, LossParams, objective_from_config
from dpokit.rewards.preferences import PreferenceFiles, PreferenceStats
from dpokit.trainer.config import Config, build_config


def _train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


# --- help comes from the registry and the dataclasses ---------------------------------------------------------------


def test_train_help_lists_every_registry_loss_with_its_description(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name, spec in LOSSES.items():
        assert re.search(rf"^  {name} +{re.escape(spec.description)}$", out, flags=re.M), name


def test_train_flags_take_their_type_and_help_from_the_config_field():
    actions = {a.dest: a for a in _train_parser()._actions}
    for flag, key in TRAIN_FLAGS.items():
        spec, _ = field_of(Config, key)
        text = actions[flag].help
        assert text.startswith(spec.metadata["help"].replace("%", "%%")) and text.endswith(f"[{key}]")
    assert (actions["beta"].type, actions["max_steps"].type, actions["model"].type) == (float, int, str)


def test_every_key_has_help_text_in_its_field_metadata():
    for cls in (Config, FrontierFile):
        lines = describe_keys(cls).splitlines()
        assert lines and all(len(line.split(None, 2)) == 3 for line in lines), cls  # key, default, help


def test_frontier_help_is_generated_from_the_dataclasses():
    text = frontier_yaml_help()
    for spec in dataclasses.fields(FrontierFile):
        assert re.search(rf"^  {spec.name} .*{re.escape(spec.metadata['help'])}$", text, flags=re.M), spec.name
    for spec in dataclasses.fields(MethodSpec):
        assert re.search(rf"^  methods\[i\]\.{spec.name} .*{re.escape(spec.metadata['help'])}$", text, flags=re.M)


# --- the loss: parameters, validation and capabilities defined once ---------------------------------------------------


def test_loss_params_built_from_the_config_carry_every_field():
    """Every LossParams field is a config key with help, and reaches the loss: distinct values set by key come back."""
    def value(i: int, spec: dataclasses.Field):
        if isinstance(spec.default, bool):
            return not spec.default
        if spec.metadata.get("choices"):  # a named choice: another one than the default
            return next(c for c in spec.metadata["choices"] if c != spec.default)
        return 0.01 * (i + 2)

    values = {spec.name: value(i, spec) for i, spec in enumerate(dataclasses.fields(LossParams))}
    cfg = build_config(None, {f"loss.{name}": value for name, value in values.items()})
    _, params = objective_from_config(cfg.loss)
    assert type(params) is LossParams and dataclasses.asdict(params) == values
    keys = describe_keys(Config)
    for spec in dataclasses.fields(LossParams):
        assert f"loss.{spec.name}" in keys and spec.metadata["help"] in keys


def test_beta_is_checked_in_one_place(monkeypatch):
    """`validate` reaches the loss ranges through `objective_from_config` and has no second β check of its own."""
    with pytest.raises(ConfigError, match=re.escape("config key 'loss.beta' must be > 0, got -1.0")):
        validate(build_config(None, {"loss.beta": -1.0}))
    monkeypatch.setattr(dpokit.losses.objective, "validate_params", lambda objective, params: None)
    validate(build_config(None, {"loss.beta": -1.0}))


def test_sft_command_asks_the_objective_not_the_name(capsys):
    assert main(["sft", "--model", "m", "--data", "d", "--output-dir", "o", "--loss", "sigmoid + sft"]) == 2
    assert "dpokit sft trains a chosen-only loss" in capsys.readouterr().err


@pytest.mark.parametrize(("loss", "chosen_only"), [("sft", True), ("2*sft", True), ("sigmoid", False),
                                                   ("sigmoid + 0.5*sft", False), ("plackett_luce", False)])
def test_frontier_trains_chosen_only_losses_on_the_best_completion(loss: str, chosen_only: bool):
    cfg = FrontierConfig(model="m", train_prompts=["a"], eval_prompts=["b"], run={"train.batch_size": 4})
    files = PreferenceFiles(Path("pairs.jsonl"), Path("ranked.jsonl"), 4,
                            PreferenceStats(0, 0, 0, 0, 0, math.nan, math.nan, math.nan))
    run_cfg, got = method_config(cfg, MethodSpec("X", loss), files)
    assert got is chosen_only
    assert run_cfg.train.batch_size == (8 if chosen_only else 2 if loss == "plackett_luce" else 4)


# --- the frontier YAML, through the same loader -----------------------------------------------------------------------


@pytest.fixture
def frontier_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    Path("p.txt").write_text("\n".join(f"prompt {i}" for i in range(5)) + "\n")

    def write(text: str) -> str:
        Path("f.yaml").write_text("model: m\nprompts: p.txt\n" + text)
        return "f.yaml"

    return write


def test_frontier_yaml_loads_like_the_train_config(frontier_yaml):
    path = frontier_yaml(
        "eval_fraction: 0.4\nsamples_per_prompt: 3\noutput_dir: a\nrun: {train: {lr: 1.0e-3}}\nmethods:\n"
        "  - {label: DPO, loss: sigmoid, beta: 1}\n  - {label: FT, loss: sft, run: {train: {batch_size: 2}}}\n"
    )
    file = load_frontier_config(path, output_dir="b")
    assert file.output_dir == "b"  # the flag wins over the file
    assert file.methods == [MethodSpec("DPO", "sigmoid", beta=1.0),
                            MethodSpec("FT", "sft", run={"train.batch_size": 2})]
    assert isinstance(file.methods[0].beta, float)
    cfg = file.experiment()
    assert (cfg.model, cfg.samples_per_prompt, cfg.run, cfg.output_dir) == ("m", 3, {"train.lr": 1e-3}, "b")
    assert len(cfg.eval_prompts) == 2 and sorted(cfg.train_prompts + cfg.eval_prompts) == [f"prompt {i}" for i in
                                                                                            range(5)]
    assert load_frontier_config(frontier_yaml("")).methods == FrontierFile().methods  # default: the paper's set


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sample_per_prompt: 3\n", "unknown config key 'sample_per_prompt' (did you mean 'samples_per_prompt'?)"),
        ("methods:\n  - {label: DPO, loss: sigmoid}\n  - {label: IPO, loss: ipo, betta: 0.1}\n",
         "unknown config key 'methods[1].betta' (did you mean 'methods[1].beta'?)"),
        ("methods:\n  - {label: DPO, loss: sigmoid}\n  - {label: IPO, loss: ipo, beta: high}\n",
         "config key 'methods[1].beta' must be float or null, got 'high'"),
        ("methods:\n  - {loss: sigmoid}\n", "config key 'methods[0].label' is required"),
        ("methods:\n  - DPO\n",
         "config key 'methods[0]' must be a mapping of label, loss, kind, reward, n, beta, alpha, run"),
        ("methods: {label: DPO}\n", "config key 'methods' must be a list"),
        ("seed: 1.5\n", "config key 'seed' must be int, got 1.5"),
        ("run: [1]\n", "config key 'run' must be a mapping"),
    ],
)
def test_frontier_yaml_errors_name_the_file_and_key(frontier_yaml, text: str, message: str):
    with pytest.raises(ConfigError, match="^f.yaml: .*" + re.escape(message)):
        load_frontier_config(frontier_yaml(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reward_text: prompt\n", "config key 'reward_text' must be one of completion, full; got 'prompt'"),
        ("model: ''\n", "config key 'model' is required"),
    ],
)
def test_frontier_yaml_values_are_validated(frontier_yaml, text: str, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_frontier_config(frontier_yaml(text))


def test_validate_checks_lists_of_dataclasses_built_in_python():
    file = FrontierFile(model="m", prompts="p.txt", methods=[MethodSpec("DPO", "sigmoid", beta="0.1")])
    with pytest.raises(ConfigError, match=re.escape("config key 'methods[0].beta' must be float or null, got '0.1'")):
        validate(file)


# --- a command still to come: a dataclass is all it takes -------------------------------------------------------------


@dataclass
class _Sampling:
    temperature: float = setting(1.0, "sampling temperature")


@dataclass
class _BestOfN:
    """Settings as a new command (Best-of-N, say) would write them."""

    policy: str = setting("", "required: the policy to sample")
    sizes: list[int] = setting(help="the N values to try", factory=lambda: [1, 4])
    pick: str = setting("max", "max | mean", choices=("max", "mean"))
    sampling: _Sampling = field(default_factory=_Sampling)

    def check(self) -> None:
        if min(self.sizes) < 1:
            raise ConfigError(f"config key 'sizes' must hold N >= 1, got {self.sizes}")


def test_a_new_command_gets_loading_checks_and_help_from_its_dataclass(tmp_path: Path):
    path = tmp_path / "bon.yaml"
    path.write_text("policy: p\nsizes: [2, '8']\nsampling: {temperature: 0.7}\n")
    settings = load(_BestOfN(), path, {"pick": "mean"})
    validate(settings, require=("policy",))
    assert (settings.sizes, settings.sampling.temperature, settings.pick) == ([2, 8], 0.7, "mean")
    bad = [
        (lambda: load(_BestOfN(), None, {"sizes": [1, "x"]}), "config key 'sizes[1]' must be int, got 'x'"),
        (lambda: load(_BestOfN(), None, {"sampling.temprature": 1}), "(did you mean 'sampling.temperature'?)"),
        (lambda: validate(load(_BestOfN(), None, {"pick": "median"})), "'pick' must be one of max, mean"),
        (lambda: validate(_BestOfN(), require=("policy",)), "config key 'policy' is required"),
        (lambda: validate(load(_BestOfN(policy="p"), None, {"sizes": [0]})), "'sizes' must hold N >= 1"),
    ]
    for call, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            call()
    text = describe_keys(_BestOfN)
    assert re.search(r"^  sampling\.temperature +1\.0 +sampling temperature$", text, flags=re.M)
    assert re.search(r"^  sizes +\[1, 4\] +the N values to try$", text, flags=re.M)


def test_config_docstring_examples():
    result = doctest.testmod(dpokit.core.settings, verbose=False)
    assert result.attempted > 0 and result.failed == 0
