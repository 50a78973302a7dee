"""Bad configs fail in `train(cfg)` before any model or tokenizer loads, with a message that names the key.

"Before any model loads" is checked, not assumed: every loader dpokit could reach (its own `load_model` /
`load_tokenizer`, wherever a module imported them, and transformers' `from_pretrained`) is replaced by a tripwire.
The control test shows the tripwire is on the path: a good config runs into it.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import transformers

import dpokit.trainer.loop  # noqa: F401  (imports every module train() reaches, so the tripwire can reach their names)
from dpokit.core.errors import ConfigError
from dpokit.trainer.config import Config, build_config
from dpokit.trainer.loop import train


class ModelLoaded(Exception):
    """Raised by the tripwire: something tried to load a model, config or tokenizer."""


def _trip(*args: Any, **kwargs: Any) -> None:
    raise ModelLoaded(f"load attempted: {args[:1]}")


@pytest.fixture(autouse=True)
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in (transformers.AutoConfig, transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase):
        monkeypatch.setattr(cls, "from_pretrained", _trip)
    for name, module in list(sys.modules.items()):
        if name == "dpokit" or name.startswith("dpokit."):
            for attr in ("load_model", "load_tokenizer"):
                if callable(getattr(module, attr, None)):
                    monkeypatch.setattr(module, attr, _trip)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """A config that passes validation: a hub-style model name (never fetched) and a real data file."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    return build_config(None, {"model.name_or_path": "org/model", "data.path": str(data),
                               "train.output_dir": str(tmp_path / "out"), "train.progress": False})


def fails_before_loading(cfg: Config, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not Path(cfg.train.output_dir).exists()  # not even the run directory was made


def test_control_a_good_config_reaches_the_tripwire(cfg: Config) -> None:
    with pytest.raises(ModelLoaded):
        train(cfg)


# Each case: dotted key -> value set in Python on a valid config (as a script or notebook would), and the message.
BAD = {
    "unknown key": ("loss.betta", 0.5, "unknown config key 'loss.betta' (did you mean 'loss.beta'?)"),
    "unknown section key": ("train.learning_rate", 1e-5, "unknown config key 'train.learning_rate'"),
    "string for a float": ("loss.beta", "high", "config key 'loss.beta' must be float, got 'high'"),
    "numeric string": ("train.lr", "1e-6", "config key 'train.lr' must be float, got '1e-6'"),
    "float for an int": ("train.batch_size", 8.0, "config key 'train.batch_size' must be int, got 8.0"),
    "bool for an int": ("data.max_length", True, "config key 'data.max_length' must be int, got True"),
    "null for a str": ("data.format", None, "config key 'data.format' may not be null"),
    "value for a section": ("model.lora", 3, "config key 'model.lora' is a section"),
    "β = 0": ("loss.beta", 0.0, "config key 'loss.beta' must be > 0, got 0.0"),
    "β < 0": ("loss.beta", -0.1, "config key 'loss.beta' must be > 0, got -0.1"),
    "β = nan": ("loss.beta", math.nan, "config key 'loss.beta' must be > 0, got nan"),
    "β = inf": ("loss.beta", math.inf, "config key 'loss.beta' must be > 0, got inf"),
    "max_prompt_length = max_length": ("data.max_prompt_length", 512,
                                       "data.max_prompt_length (512) must be < data.max_length (512)"),
    "max_prompt_length > max_length": ("data.max_prompt_length", 600,
                                       "data.max_prompt_length (600) must be < data.max_length (512)"),
    "unknown loss": ("loss.name", "sigmod", "loss.name: unknown loss 'sigmod'"),
    "cdpo without label_smoothing": ("loss.name", "cdpo",
                                     "config key 'loss.label_smoothing' must be in (0, 0.5) for cdpo, got 0.0"),
    "no model": ("model.name_or_path", "", "config key 'model.name_or_path' is required"),
    "missing model dir (~)": ("model.name_or_path", "~/no-such-dpokit-model",
                              "config key 'model.name_or_path': no such directory: ~/no-such-dpokit-model"),
    "missing model dir (./)": ("model.name_or_path", "./no/such/model",
                               "config key 'model.name_or_path': no such directory: ./no/such/model"),
    "missing tokenizer dir": ("model.tokenizer", "/no/such/tokenizer",
                              "config key 'model.tokenizer': no such directory: /no/such/tokenizer"),
    "missing reference dir": ("reference.name_or_path", "../no-such-reference",
                              "config key 'reference.name_or_path': no such directory: ../no-such-reference"),
    "missing data dir": ("data.path", "./no-such-dataset-dir", "config key 'data.path': file not found"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_value_fails_before_loading_naming_the_key(cfg: Config, case: str) -> None:
    key, value, message = BAD[case]
    section, name = key.split(".", 1)
    node = getattr(cfg, section)
    *parents, leaf = name.split(".")
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)
    fails_before_loading(cfg, re.escape(message))


def test_missing_data_files_fail_before_loading(cfg: Config, tmp_path: Path) -> None:
    cfg.data.path = str(tmp_path / "missing.jsonl")
    fails_before_loading(cfg, re.escape(f"config key 'data.path': file not found: {tmp_path / 'missing.jsonl'}"))
    cfg.data.path, cfg.data.eval_path = str(tmp_path / "d.jsonl"), str(tmp_path / "eval.parquet")
    fails_before_loading(cfg, re.escape("config key 'data.eval_path': file not found"))


def test_missing_model_directory_by_absolute_path(cfg: Config, tmp_path: Path) -> None:
    cfg.model.name_or_path = str(tmp_path / "checkpoints" / "step-100")
    fails_before_loading(cfg, re.escape(f"config key 'model.name_or_path': no such directory: {tmp_path}"))


def test_model_path_that_is_a_file(cfg: Config, tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    cfg.model.name_or_path = str(weights)
    fails_before_loading(cfg, "config key 'model.name_or_path': is a file, not a model directory")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("loss:\n  betta: 0.5\n", "unknown config key 'loss.betta' (did you mean 'loss.beta'?)"),
        ("optimizer: adamw\n", "unknown config key 'optimizer'"),
        ("loss:\n  beta: high\n", "config key 'loss.beta' must be float, got 'high'"),
        ("train:\n  batch_size: [8]\n", "config key 'train.batch_size' must be int, got [8]"),
        ("loss:\n  beta: -1\n", "config key 'loss.beta' must be > 0, got -1.0"),
        ("data:\n  max_length: 128\n  max_prompt_length: 128\n", "must be < data.max_length (128)"),
    ],
)
def test_bad_yaml_fails_before_loading_naming_the_key(cfg: Config, tmp_path: Path, yaml_text: str,
                                                      message: str) -> None:
    """From a file, unknown keys and wrong types fail in build_config; ranges in train(); nothing loads either way."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train(build_config(str(path), base=cfg))
    assert not Path(cfg.train.output_dir).exists()


def test_an_existing_local_model_directory_passes_validation(cfg: Config, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    cfg.model.name_or_path = str(tmp_path / "model")
    with pytest.raises(ModelLoaded):  # validation passed; the tokenizer load is next
        train(cfg)


def test_a_value_outside_choices_that_include_null_is_a_config_error(tmp_path):
    """A frontier method's `reward` may be null or one of its names; anything else is refused in one line (the
    message used to crash joining None into the list of choices)."""
    from dpokit.core.settings import load, validate
    from dpokit.experiments.frontier_config import FrontierFile

    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    settings = load(FrontierFile(), None, {"model": "m", "prompts": str(prompts),
                                           "methods": [{"label": "PPO", "kind": "ppo", "reward": "vader"}]})
    with pytest.raises(ConfigError, match=r"'methods\[0\]\.reward' must be one of null, learned, ground_truth"):
        validate(settings)
