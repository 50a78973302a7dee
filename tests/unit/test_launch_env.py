"""What dpokit reads from the environment `accelerate launch` sets for FSDP and DeepSpeed configs, and the clear
errors for settings it cannot honour (the 2-process runs themselves are in tests/integration/test_distributed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dpokit.core.errors import ConfigError
from dpokit.trainer.launch import fsdp_from_accelerate, zero_from_accelerate


@pytest.fixture
def env(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "FSDP_VERSION", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                 "ACCELERATE_DEEPSPEED_CONFIG_FILE", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                 "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_nothing_asked_means_neither(env):
    assert fsdp_from_accelerate() is False
    assert zero_from_accelerate() is None


def test_fsdp_version_2_is_used_and_version_1_refused(env):
    env.setenv("ACCELERATE_USE_FSDP", "true")
    env.setenv("FSDP_VERSION", "2")
    assert fsdp_from_accelerate() is True
    env.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        fsdp_from_accelerate()
    env.setenv("ACCELERATE_USE_FSDP", "maybe")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_FSDP='maybe'"):
        fsdp_from_accelerate()


def test_zero_settings_from_the_environment(env):
    pytest.importorskip("deepspeed")
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    env.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    env.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    env.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")
    config = zero_from_accelerate()
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"}}
    assert config["bf16"] == {"enabled": False} and config["fp16"] == {"enabled": False}


@pytest.mark.parametrize(
    ("file_config", "message"),
    [
        ({"zero_optimization": {"stage": 0}}, "stage 0"),
        ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, "enables bf16.*train.precision=bf16"),
        ({"zero_optimization": {"stage": 2}, "fp16": {"enabled": "true"}}, "enables fp16"),
        (None, "DeepSpeed config .*ds.json"),  # not JSON
    ],
)
def test_deepspeed_json_files_that_cannot_be_honoured_are_refused(env, tmp_path, file_config, message):
    pytest.importorskip("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(file_config) if file_config is not None else "{stage: 2")
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    env.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=message):
        zero_from_accelerate()


def test_a_deepspeed_json_file_is_read(env, tmp_path):
    pytest.importorskip("deepspeed")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}}))
    env.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    env.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    assert zero_from_accelerate()["zero_optimization"] == {"stage": 2, "overlap_comm": True}


def test_a_plain_training_run_never_loads_deepspeed(model_dir, hh_path, tmp_path):
    """Nothing asked for DeepSpeed (no ACCELERATE_USE_DEEPSPEED): a whole `dpokit train`, final save included
    (transformers' save_pretrained would import it to unwrap the model), leaves it unloaded and its log line unprinted.
    In a subprocess: this test process may have loaded it already."""
    pytest.importorskip("deepspeed")  # otherwise there is nothing to keep out
    script = f"""
import sys
from dpokit.cli import main
code = main(["train", "--model", {str(model_dir)!r}, "--data", {str(hh_path)!r}, "--output-dir", {str(tmp_path)!r},
             "--max-steps", "2", "--max-length", "96", "data.limit=8", "data.on_bad_record=skip"])
print("exit", code, "deepspeed loaded:", any(m == "deepspeed" or m.startswith("deepspeed.") for m in sys.modules))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.strip().splitlines()[-1] == "exit 0 deepspeed loaded: False", done.stderr[-3000:]
    assert (tmp_path / "model.safetensors").is_file()  # the save really ran
    assert "Setting accelerator" not in done.stderr + done.stdout
