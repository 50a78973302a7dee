"""Config layering and validation; the CLI's help and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dpokit.cli import main
from dpokit.core.errors import ConfigError
from dpokit.core.settings import describe_keys, parse_overrides, save, validate
from dpokit.trainer.config import Config, build_config


def test_layers_apply_in_order(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("loss:\n  beta: 0.5\n  name: ipo\ntrain:\n  lr: 1e-5\n")
    cfg = build_config(str(cfg_file), {"loss.beta": 0.2}, parse_overrides(["loss.beta=0.3", "data.limit=null"]))
    assert (cfg.loss.beta, cfg.loss.name, cfg.train.lr, cfg.data.limit) == (0.3, "ipo", 1e-5, None)


def test_saved_config_round_trips(tmp_path):
    cfg = build_config(None, {"loss.beta": 0.7, "model.lora.r": 4})
    save(cfg, tmp_path / "c.yaml")
    assert build_config(str(tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss.betta": 1}, "unknown config key 'loss.betta' (did you mean 'loss.beta'?)"),
        ({"nope.x": 1}, "unknown config key 'nope'"),
        ({"loss.beta": "high"}, "'loss.beta' must be float"),
        ({"train.max_steps": 1.5}, "'train.max_steps' must be int or null"),
        ({"train.batch_size": None}, "'train.batch_size' may not be null"),
        ({"model.lora": 3}, "is a section"),
    ],
)
def test_bad_keys_and_types_name_the_key(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(None, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss.beta": 0.0}, "'loss.beta' must be > 0"),
        ({"data.max_prompt_length": 600}, "max_prompt_length \\(600\\) must be < data.max_length \\(512\\)"),
        ({"train.optimizer": "sgd"}, "'train.optimizer' must be one of rmsprop, adamw"),
        ({"data.path": "missing.jsonl"}, "'data.path': file not found"),
        ({"data.eval_fraction": 1.0}, "eval_fraction"),
    ],
)
def test_bad_values_fail_validation(values, message):
    with pytest.raises(ConfigError, match=message):
        validate(build_config(None, values))


def test_every_key_is_documented():
    text = describe_keys(Config)
    for section in ("model", "reference", "data", "loss", "train"):
        for key in vars(getattr(Config(), section)):
            assert f"{section}.{key}" in text
    assert all(len(line.split(None, 2)) == 3 for line in text.splitlines())  # every key has a comment


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["train", "--model", "m", "--data", str(tmp_path / "none.jsonl"), "--output-dir", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error: config key 'data.path': file not found") and err.count("\n") == 1
    assert main(["train", "--model", "m", "--data", "d", "--output-dir", "o", "loss.beta=-1"]) == 2
    assert "'loss.beta' must be > 0" in capsys.readouterr().err


def test_bad_record_error_names_file_line_field(model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    good, bad = '{"prompt": "p", "chosen": "a", "rejected": "b"}', '{"prompt": "p", "chosen": "a", "rejected": "a"}'
    data.write_text(f"{good}\n{bad}\n")
    code = main(["train", "--model", str(model_dir), "--data", str(data), "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"dpokit: error: {data}:2: field 'rejected'")


def test_help_documents_commands_and_keys():
    out = subprocess.run([sys.executable, "-m", "dpokit", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--beta" in out.stdout and "loss.label_smoothing" in out.stdout and "reference.mode" in out.stdout
    top = subprocess.run([sys.executable, "-m", "dpokit", "--help"], capture_output=True, text=True).stdout
    for command in ("train", "sft", "eval", "demo"):
        assert command in top


def _eval_parser():
    import argparse

    from dpokit.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["eval"]


def test_eval_flags_come_from_its_settings_dataclass():
    """Every `dpokit eval` flag is a key of `EvalConfig`: its type, help and default are the field's, none written
    by hand; --perplexity repeats into the list key."""
    from dpokit.cli import EVAL_FLAGS, parse
    from dpokit.core.settings import field_of
    from dpokit.eval.eval_config import EvalConfig

    actions = {a.dest: a for a in _eval_parser()._actions}
    for flag, key in EVAL_FLAGS.items():
        spec, _ = field_of(EvalConfig, key)
        assert actions[flag].default is None and actions[flag].help.endswith(f"[{key}]"), flag  # defaults: the field
        assert actions[flag].help.startswith(spec.metadata["help"]), flag
    assert (actions["beta"].type, actions["max_length"].type, actions["perplexity_limit"].type) == (float, int, int)
    args = parse(["eval", "--policy", "p", "--perplexity", "a.txt", "--perplexity", "b.txt", "data.limit=3"])
    assert args.perplexity == ["a.txt", "b.txt"] and args.overrides == ["data.limit=3"]
    assert "(default 1024) [data.max_length]" in actions["max_length"].help  # eval's own default, from its field
    cfg = EvalConfig()
    assert (cfg.data.max_length, cfg.batch_size, cfg.loss.name, cfg.loss.beta) == (1024, 8, "sigmoid", 0.1)


def test_eval_settings_load_from_yaml_flags_and_overrides_and_are_checked(tmp_path, capsys):
    from dpokit.core.settings import load
    from dpokit.eval.eval_config import EvalConfig

    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text("loss: {beta: 0.3}\nperplexity: {sources: [held.txt], limit: 5}\nbatch_size: 2\n")
    cfg = load(EvalConfig(), yaml_file, {"model.name_or_path": "m", "loss.beta": 0.2}, {"data.format": "implicit"})
    assert (cfg.loss.beta, cfg.perplexity.sources, cfg.perplexity.limit, cfg.batch_size, cfg.data.format) == (
        0.2, ["held.txt"], 5, 2, "implicit")
    train = cfg.as_train_config()
    assert (train.train.batch_size, train.train.shuffle, train.data is cfg.data) == (2, False, True)
    for argv, message in [
        (["eval", "--policy", "m"], "nothing to evaluate: give --data"),
        (["eval", "--data", str(yaml_file)], "config key 'model.name_or_path' is required"),
        (["eval", "--policy", "m", "--data", str(yaml_file), "--beta", "0"], "'loss.beta' must be > 0"),
        (["eval", "--policy", "m", "--data", str(yaml_file)], "loss 'sigmoid' compares against a reference"),
        (["eval", "--policy", "m", "--data", str(yaml_file), "data.eval_fraction=0.5"], "scores every example"),
        (["eval", "--policy", "m", "--perplexity", "x.txt", "train.lr=1"], "unknown config key 'train"),
    ]:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
