"""Shared fixtures: a BPE tokenizer trained on HH text and tiny random Llamas saved like real checkpoints."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch

from dpokit.models.tiny import tiny_llama, train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
HH_PATH = Path(os.environ.get("DPOKIT_SHARED_DATA", REPO.parent / "shared" / "data")) / "hh_harmless_test.jsonl.gz"


def hh_texts(limit: int | None = None) -> list[str]:
    with gzip.open(HH_PATH, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(limit or 10**9), f, strict=False)]
    return [t for r in rows for t in (r["chosen"], r["rejected"])]


@pytest.fixture(scope="session", autouse=True)
def tokenization_cache(tmp_path_factory):
    """The tests' tokenization cache is their own (it starts empty and goes with the session), not the user's."""
    before = os.environ.get("DPOKIT_CACHE")
    os.environ["DPOKIT_CACHE"] = str(tmp_path_factory.mktemp("dpokit-cache"))
    yield
    if before is None:
        os.environ.pop("DPOKIT_CACHE", None)
    else:
        os.environ["DPOKIT_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: a second torch thread gains little, and stalls badly when other processes share
    the cores (each op waits at a barrier for a descheduled thread). Use with `pytest.mark.usefixtures`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def hh_path() -> Path:
    if not HH_PATH.is_file():
        pytest.skip(f"shared data not found at {HH_PATH}")
    return HH_PATH


@pytest.fixture(scope="session")
def tokenizer(hh_path):
    return train_bpe_tokenizer(hh_texts(400), vocab_size=768)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama + tokenizer saved with save_pretrained (safetensors), loadable by path."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory, tokenizer) -> Path:
    """Same architecture as `model_dir`, different random weights."""
    path = tmp_path_factory.mktemp("tiny-llama-other")
    tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
