"""Loading is safe by default: safetensors only, pickle checkpoints refused unless allowed, no remote code unless asked.

Pickle matters because `torch.load` of a crafted `pytorch_model.bin` can run arbitrary code. The tests that must not
unpickle anything replace `torch.load` with a tripwire, so "refused" means refused before the file was opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import dpokit.models.loading
from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.models.loading import load_model, load_tokenizer
from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer
from dpokit.trainer.config import Config


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, torch.nn.Module]:
    tokenizer = train_bpe_tokenizer(["hello world, how are you", "fine thanks"] * 4, vocab_size=280)
    return tokenizer, tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def safetensors_dir(tmp_path_factory: pytest.TempPathFactory, tiny: tuple) -> Path:
    tokenizer, model = tiny
    path = tmp_path_factory.mktemp("safetensors")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="module")
def pickle_dir(tmp_path_factory: pytest.TempPathFactory, tiny: tuple) -> Path:
    """A checkpoint as older tools wrote it: config.json + pytorch_model.bin (a torch.save pickle).

    Written by hand: transformers 5.x `save_pretrained` has no `safe_serialization` switch any more and always writes
    model.safetensors (checked with 5.23: `safe_serialization=False` is silently ignored).
    """
    tokenizer, model = tiny
    path = tmp_path_factory.mktemp("pickle")
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    assert not list(path.glob("*.safetensors"))
    return path


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail(f"torch.load was called on {args[:1]}")

    monkeypatch.setattr(torch, "load", refuse)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_defaults_are_safe() -> None:
    assert (Config().model.allow_pickle, Config().model.trust_remote_code) == (False, False)


def test_pickle_checkpoint_is_refused_by_default(pickle_dir: Path, no_unpickling: None) -> None:
    with pytest.raises(ConfigError) as err:
        load_model(str(pickle_dir), ModelConfig())
    message = str(err.value)
    assert message.startswith(f"model '{pickle_dir}' has only pickle weights (pytorch_model.bin)")
    assert "model.allow_pickle=true" in message


def test_transformers_refuses_it_too_when_the_local_check_is_bypassed(
    pickle_dir: Path, no_unpickling: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second line of defence, and what hub checkpoints get: transformers 5.23 with use_safetensors=True and only
    a .bin raises OSError ("no file named model.safetensors"), which load_model turns into a ConfigError."""
    monkeypatch.setattr(dpokit.models.loading, "_refuse_pickle_only", lambda name: None)
    refused = r"model\.safetensors.*only safetensors weights load unless model\.allow_pickle"
    with pytest.raises(ConfigError, match=refused):
        load_model(str(pickle_dir), ModelConfig())


def test_pickle_checkpoint_loads_with_allow_pickle(pickle_dir: Path, tiny: tuple) -> None:
    model = load_model(str(pickle_dir), ModelConfig(allow_pickle=True))
    assert same_weights(model, tiny[1])


def test_safetensors_load_by_default_without_unpickling(safetensors_dir: Path, tiny: tuple,
                                                        no_unpickling: None) -> None:
    assert same_weights(load_model(str(safetensors_dir), ModelConfig()), tiny[1])


def test_allow_pickle_still_loads_safetensors(safetensors_dir: Path, tiny: tuple, no_unpickling: None) -> None:
    """allow_pickle widens what loads; it must not make safetensors-only checkpoints fail (use_safetensors=False did:
    transformers then looks for pytorch_model.bin only)."""
    assert same_weights(load_model(str(safetensors_dir), ModelConfig(allow_pickle=True)), tiny[1])


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[dict]]:
    """Records the keyword arguments of every from_pretrained call, then lets it run."""
    calls: dict[str, list[dict]] = {}
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args: Any, _name: str = cls.__name__, _original: Any = original, **kwargs: Any) -> Any:
            calls.setdefault(_name, []).append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    return calls


def test_trust_remote_code_is_off_unless_asked(safetensors_dir: Path, captured: dict[str, list[dict]]) -> None:
    load_model(str(safetensors_dir), ModelConfig())
    load_tokenizer(str(safetensors_dir))
    assert captured["AutoConfig"][0]["trust_remote_code"] is False
    assert captured["AutoModelForCausalLM"][0]["trust_remote_code"] is False
    assert captured["AutoModelForCausalLM"][0]["use_safetensors"] is True
    assert captured["AutoTokenizer"][0]["trust_remote_code"] is False


def test_trust_remote_code_is_passed_through_when_asked(safetensors_dir: Path, captured: dict[str, list[dict]]) -> None:
    load_model(str(safetensors_dir), ModelConfig(trust_remote_code=True))
    load_tokenizer(str(safetensors_dir), trust_remote_code=True)
    assert captured["AutoConfig"][0]["trust_remote_code"] is True
    assert captured["AutoModelForCausalLM"][0]["trust_remote_code"] is True
    assert captured["AutoTokenizer"][0]["trust_remote_code"] is True
