"""The `kl` term on the demo's task (benchmarks/kl_term.py at the tiny size): trained with a large λ, DPO ends much
closer to πref, by the frontier's held-out sequence KL of sampled completions, than DPO alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kl_term.py"

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def load_script():
    spec = importlib.util.spec_from_file_location("kl_term_script", SCRIPT)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_large_lambda_ends_closer_to_the_reference(tmp_path):
    """Measured (seed 0, 30 steps, β = 0.1): held-out KL 5.75 nats with λ = 0, 0.13 with λ = 10."""
    script = load_script()
    plain, regularised = script.compare(tmp_path, "tiny", steps=30, lambdas=[0.0, 10.0], betas=[0.1], seed=0)
    assert (plain.loss, regularised.loss) == ("sigmoid", "sigmoid + 10*kl")
    assert plain.train_kl_token is None and regularised.train_kl_token is not None
    assert regularised.kl < 0.25 * plain.kl, (plain, regularised)
    assert 0 <= regularised.train_kl_token < 0.1  # the term's logged value: nats per token, small once held down
