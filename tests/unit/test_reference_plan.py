"""reference.mode decides the reference, alone: every mode x {LoRA, full} x {reference.name_or_path set, unset}."""

from __future__ import annotations

import pytest
import torch

from dpokit.core.errors import ConfigError
from dpokit.lm.reference import AdapterOff, FrozenModel
from dpokit.losses import parse_objective
from dpokit.trainer.assembly import Prepared, ReferencePlan, build_policy, build_reference, load_all, plan_reference
from dpokit.trainer.config import Config

OTHER = "other-reference"
COPY, ADAPTER = ReferencePlan("copy"), ReferencePlan("adapter")
# (mode, lora, name set) -> the plan, or the start of the ConfigError
TABLE = {
    ("auto", False, False): COPY,
    ("auto", False, True): ReferencePlan("copy", OTHER),
    ("auto", True, False): ADAPTER,
    ("auto", True, True): ReferencePlan("copy", OTHER),
    ("copy", False, False): COPY,
    ("copy", False, True): ReferencePlan("copy", OTHER),
    ("copy", True, False): COPY,
    ("copy", True, True): ReferencePlan("copy", OTHER),
    ("adapter", False, False): "reference.mode=adapter needs model.lora.enabled=true",
    ("adapter", False, True): "reference.mode=adapter contradicts reference.name_or_path",
    ("adapter", True, False): ADAPTER,
    ("adapter", True, True): "reference.mode=adapter contradicts reference.name_or_path",
    ("precomputed", False, False): ReferencePlan("copy", cached=True),
    ("precomputed", False, True): ReferencePlan("copy", OTHER, cached=True),
    ("precomputed", True, False): ReferencePlan("adapter", cached=True),
    ("precomputed", True, True): ReferencePlan("copy", OTHER, cached=True),
    ("none", False, False): "loss 'sigmoid' needs a reference model",
    ("none", False, True): "reference.mode=none contradicts reference.name_or_path",
    ("none", True, False): "loss 'sigmoid' needs a reference model",
    ("none", True, True): "reference.mode=none contradicts reference.name_or_path",
}


def config(mode: str, lora: bool, name: str | None, model: str = "policy") -> Config:
    cfg = Config()
    cfg.model.name_or_path, cfg.model.lora.enabled = model, lora
    cfg.reference.mode, cfg.reference.name_or_path = mode, name
    return cfg


@pytest.mark.parametrize(("mode", "lora", "named"), list(TABLE))
def test_every_mode_with_and_without_lora_and_reference_weights(mode, lora, named):
    cfg = config(mode, lora, OTHER if named else None)
    want = TABLE[mode, lora, named]
    if isinstance(want, str):
        with pytest.raises(ConfigError, match="^" + want):
            plan_reference(cfg, parse_objective("sigmoid"))
    else:
        assert plan_reference(cfg, parse_objective("sigmoid")) == want


@pytest.mark.parametrize("mode", ["copy", "adapter", "precomputed"])
def test_a_loss_without_reference_refuses_an_explicit_reference_mode(mode):
    cfg = config(mode, lora=True, name=None)
    with pytest.raises(ConfigError, match=f"reference.mode={mode}, but loss 'simpo' uses none"):
        plan_reference(cfg, parse_objective("simpo"))
    with pytest.raises(ConfigError, match="loss.reference_free=true"):
        plan_reference(cfg, parse_objective("sigmoid", reference_free=True))
    for ok in ("auto", "none"):
        assert plan_reference(config(ok, True, None), parse_objective("simpo")) == ReferencePlan(None)


def test_precomputed_refuses_unpaired_losses():
    with pytest.raises(ConfigError, match="precomputed does not support unpaired"):
        plan_reference(config("precomputed", False, None), parse_objective("kto"))


@pytest.mark.parametrize("lora", [False, True])
def test_the_kl_term_needs_a_live_reference(lora, tmp_path):
    """`kl` reads the reference's next-token distributions: a cache of log-probs cannot give them, refused before
    anything loads (the model path does not exist); copy and adapter-off references are planned as for sigmoid."""
    objective = parse_objective("sigmoid + 0.1*kl")
    with pytest.raises(ConfigError, match="^reference.mode=precomputed caches the reference's log-probs only, but "
                                          "loss 'sigmoid \\+ 0.1\\*kl' needs its next-token distributions"):
        load_all(config("precomputed", lora, None, model=str(tmp_path / "no-such-model")), objective,
                 torch.device("cpu"), print)
    with pytest.raises(ConfigError, match="needs a reference model"):
        plan_reference(config("none", lora, None), objective)
    for mode in ("auto", "copy", "adapter") if lora else ("auto", "copy"):
        assert plan_reference(config(mode, lora, None), objective) == TABLE[mode, lora, False]


def test_contradictions_fail_before_any_model_loads(tmp_path):
    cfg = config("adapter", lora=False, name=None, model=str(tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="reference.mode=adapter needs"):
        load_all(cfg, parse_objective("sigmoid"), torch.device("cpu"), print)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize(("mode", "lora", "named"), [k for k, v in TABLE.items() if isinstance(v, ReferencePlan)
                                                     and not v.cached])
def test_the_built_reference_is_the_planned_one(mode, lora, named, model_dir, other_model_dir):
    cfg = config(mode, lora, str(other_model_dir) if named else None, model=str(model_dir))
    policy = build_policy(cfg.model, torch.device("cpu"))
    train_ref, eval_ref = build_reference(cfg, policy, parse_objective("sigmoid"), Prepared([], []), 0,
                                          torch.device("cpu"))
    assert train_ref is eval_ref
    if TABLE[mode, lora, named].live == "adapter":
        assert isinstance(train_ref, AdapterOff) and train_ref.model is policy
        return
    assert isinstance(train_ref, FrozenModel) and train_ref.model is not policy
    expected = build_policy(config("copy", False, None, str(other_model_dir if named else model_dir)).model,
                            torch.device("cpu"))
    got, want = _weights(train_ref.model), _weights(expected)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
