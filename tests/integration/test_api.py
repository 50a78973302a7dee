"""The Python API: `dpokit.train(dpokit.Config(...))`, `sft`, `evaluate`, `generate`, with the CLI's checks."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

import dpokit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(model_dir, hh_path, out, **keys) -> dpokit.Config:
    cfg = dpokit.Config()
    cfg.model.name_or_path, cfg.data.path, cfg.train.output_dir = str(model_dir), str(hh_path), str(out)
    cfg.data.limit, cfg.data.on_bad_record, cfg.data.max_length = 16, "skip", 128
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr, cfg.train.progress = 3, 4, 1e-3, False
    for key, value in keys.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def test_train_evaluate_generate_sft(model_dir, hh_path, tmp_path):
    summary = dpokit.train(config(model_dir, hh_path, tmp_path / "dpo", train__optimizer="adamw"))
    assert summary.steps == 3 and (tmp_path / "dpo" / "model.safetensors").is_file()
    assert summary.final_train["loss"] < math.log(2) + 0.5

    same = dpokit.evaluate(config(model_dir, hh_path, tmp_path / "unused", reference__name_or_path=str(model_dir)))
    assert same["loss"] == pytest.approx(math.log(2), abs=1e-6) and same["num_pairs"] == 16
    trained = dpokit.evaluate(config(tmp_path / "dpo", hh_path, tmp_path / "unused",
                                     reference__name_or_path=str(model_dir)))
    assert trained["rewards/margins"] != pytest.approx(0.0, abs=1e-6)

    rows = dpokit.generate(str(tmp_path / "dpo"), ["Human: hi", "Human: bye"], num_samples=2, max_new_tokens=4,
                           chat=False)
    assert [r["prompt"] for r in rows] == ["Human: hi"] * 2 + ["Human: bye"] * 2
    assert all(isinstance(r["completion"], str) for r in rows)

    sft = dpokit.sft(config(model_dir, hh_path, tmp_path / "sft", loss__name="sft"))
    assert sft.steps == 3 and "rewards/rejected" not in sft.final_train  # the chosen response only


def test_the_cli_checks_apply(model_dir, hh_path, tmp_path):
    cfg = config(model_dir, hh_path, tmp_path / "x")
    cfg.loss.betta = 0.5  # a typo is not silently ignored
    with pytest.raises(dpokit.ConfigError, match="did you mean 'loss.beta'"):
        dpokit.train(cfg)
    with pytest.raises(dpokit.ConfigError, match="must be > 0"):
        dpokit.train(config(model_dir, hh_path, tmp_path / "x", loss__beta=-1.0))
    with pytest.raises(dpokit.ConfigError, match="dpokit sft trains a chosen-only loss"):
        dpokit.sft(config(model_dir, hh_path, tmp_path / "x"))
    with pytest.raises(dpokit.DataError, match="data.on_bad_record=skip"):
        dpokit.train(config(model_dir, hh_path, tmp_path / "x", data__on_bad_record="error", data__limit=None))
    with pytest.raises(dpokit.ConfigError, match="nothing to complete"):
        dpokit.generate(str(model_dir), [])


def test_generate_with_and_without_the_chat_template(model_dir, tmp_path):
    """A model with a template gets each prompt as a user message by default; without one, chat=True is refused."""
    from transformers import AutoTokenizer

    from dpokit.data.chat import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template
    chat = dpokit.generate(str(model_dir), ["hi"], max_new_tokens=3, seed=1)
    plain = dpokit.generate(str(model_dir), [render_prompt(tokenizer, "hi")], max_new_tokens=3, seed=1, chat=False)
    assert chat[0]["completion"] == plain[0]["completion"]  # the same ids were sampled from
    plain_dir = tmp_path / "plain"
    for name in model_dir.iterdir():
        (plain_dir / name.name).parent.mkdir(exist_ok=True)
        (plain_dir / name.name).write_bytes(name.read_bytes())
    tokenizer.chat_template = None
    for leftover in plain_dir.glob("chat_template*"):
        leftover.unlink()
    tokenizer.save_pretrained(plain_dir)
    with pytest.raises(dpokit.ConfigError, match="has no chat template"):
        dpokit.generate(str(plain_dir), ["hi"], chat=True)


def test_the_api_names_stay_functions_after_the_training_modules_load():
    """`dpokit.train` is the function, although a subpackage dpokit/train/ exists and loads during training."""
    code = ("import dpokit, dpokit.trainer.loop, dpokit.trainer.run; "
            "print(all(callable(f) for f in (dpokit.train, dpokit.sft, dpokit.evaluate, dpokit.generate)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True"]
