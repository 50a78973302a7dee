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
