"""Log-probs of the padded batch vs unpadded single rows; the three reference implementations agree."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dpokit.core.sections import LoraConfig, ModelConfig
from dpokit.data.collate import collate
from dpokit.data.records import Example
from dpokit.data.store import StoreBuilder
from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
from dpokit.lm.logprobs import selected_token_logps, sequence_logps
from dpokit.lm.reference import AdapterOff, FrozenModel, cache_key, load_cached, precompute
from dpokit.models.loading import apply_lora, load_model

PAIRS = [
    ("\n\nHuman: how do I bake bread?\n\nAssistant:", " Mix flour, water and yeast, then bake it.", " No."),
    ("\n\nHuman: hi\n\nAssistant:", " Hello!", " What do you want? I am busy with many other things today."),
    ("\n\nHuman: tell me a joke about cats and dogs please\n\nAssistant:", " Sure.", " A cat walks into a bar."),
]


@pytest.fixture(scope="module")
def examples(tokenizer):
    exs = [Example(p, (c, r)) for p, c, r in PAIRS]
    return tokenize_examples(exs, tokenizer, TokenizeSettings(max_length=64)).examples


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(str(model_dir), ModelConfig()).eval()


def test_selected_token_logps_matches_log_softmax():
    logits = torch.randn(3, 5, 11)
    targets = torch.randint(0, 11, (3, 5))
    expected = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(selected_token_logps(logits, targets), expected)


def test_padded_batch_equals_each_row_alone(model, examples, tokenizer):
    """Summed response log-probs must not depend on padding or on the other rows of the batch."""
    batch = collate(examples, tokenizer.pad_token_id)
    got = sequence_logps(model, batch)
    for b, ex in enumerate(examples):
        for k, resp in enumerate(ex.response_ids):
            ids = torch.tensor([list(ex.prompt_ids) + list(resp)])
            with torch.no_grad():
                logp = model(ids).logits[0, :-1].log_softmax(-1)
            n = len(ex.prompt_ids)
            picked = logp[n - 1:].gather(-1, ids[0, n:].unsqueeze(-1)).sum()
            assert got.logps[b, k].item() == pytest.approx(picked.item(), abs=1e-4)
            assert got.num_tokens[b, k].item() == len(resp)


def _lora_policy(model):
    policy = apply_lora(copy.deepcopy(model), LoraConfig(enabled=True, r=4, alpha=8))
    with torch.no_grad():  # a trained-looking adapter, so adapter-on really differs from adapter-off
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(len(name)))
    return policy


def test_three_references_agree(model, examples, tokenizer, tmp_path):
    batch = collate(examples, tokenizer.pad_token_id)
    frozen = FrozenModel(copy.deepcopy(model)).logps(batch)
    policy = _lora_policy(model).train()
    adapter_off = AdapterOff(policy).logps(batch)
    assert policy.training  # restored after the reference forward
    with torch.no_grad():
        adapter_on = sequence_logps(policy, batch).logps
    assert (adapter_on - frozen).abs().max() > 1e-2  # the adapter matters ...
    torch.testing.assert_close(adapter_off, frozen, atol=1e-5, rtol=0)  # ... and switching it off restores πref

    batches = [collate(examples[i:i + 2], tokenizer.pad_token_id) for i in range(0, len(examples), 2)]
    cached = precompute(FrozenModel(model), batches, tmp_path / "c.safetensors", len(examples), 2, progress=False)
    shuffled = collate([examples[2], examples[0]], tokenizer.pad_token_id)
    torch.testing.assert_close(cached.logps(shuffled), frozen[[2, 0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(load_cached(tmp_path / "c.safetensors").table, cached.table)


def test_cache_key_tracks_weights_and_data_not_the_adapter(model, examples):
    key = cache_key(model, examples, "fp32")
    assert cache_key(copy.deepcopy(model), examples, "fp32") == key
    assert cache_key(_lora_policy(model), examples, "fp32") == key  # adapter-off reference = base weights
    assert cache_key(model, examples[:2], "fp32") != key
    assert cache_key(model, examples, "bf16") != key
    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert cache_key(changed, examples, "fp32") != key


@pytest.mark.parametrize("damage", ["truncated", "wrong shape"])
def test_a_damaged_reference_cache_is_removed_not_used(model, examples, tokenizer, tmp_path, damage):
    path = tmp_path / "c.safetensors"
    batches = [collate(examples, tokenizer.pad_token_id)]
    precompute(FrozenModel(model), batches, path, len(examples), 2, progress=False)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-16])
        shape = (len(examples), 2)
    else:
        shape = (len(examples) + 1, 2)  # the table of other data
    assert load_cached(path, shape) is None and not path.exists()


def test_a_store_is_keyed_by_its_ids_and_indices(model, examples):
    builder = StoreBuilder(vocab_size=len(examples) + 10_000)
    for ex in examples:
        builder.add(ex, "x.jsonl", 1)
    store = builder.build()
    key = cache_key(model, store, "fp32")
    assert cache_key(model, store[:], "fp32") == key
    assert cache_key(model, store.take(np.arange(len(store)), np.arange(len(store)) + 1), "fp32") != key
    assert cache_key(model, store[1:], "fp32") != key
