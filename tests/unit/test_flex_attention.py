"""`train.attention=flex` on CPU: the block mask's rule equals the dense mask's, and the forward equals the dense path.

What runs on CPU (torch 2.13): FlexAttention's forward, eager and compiled. Its backward raises NotImplementedError,
so gradients are compared only on CUDA (tests/gpu/test_cuda_paths.py). The forward here runs flex_attention eagerly:
transformers wraps it in `torch.compile`, which on CPU builds a C++ kernel per shape (seconds each, with g++) and in
this torch hit an inductor C++ compile error on a recompile for a new shape; the kernel is torch's, the mask and the
way it reaches the attention layers (a 4D BlockMask passed through by transformers) are what dpokit adds and tests.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from test_fast_paths import ODD_PAIRS, PAD, RANKED, make_examples

from dpokit.core.errors import ConfigError
from dpokit.core.sections import ModelConfig
from dpokit.data.collate import collate
from dpokit.data.packing import pack
from dpokit.lm.attention import FLEX, packed_block_mask, packed_mask_mod, uses_flex
from dpokit.lm.logprobs import sequence_logps
from dpokit.models.loading import load_model
from dpokit.models.tiny import tiny_llama

flex_module = pytest.importorskip("torch.nn.attention.flex_attention")


@pytest.fixture
def eager_flex(monkeypatch):
    """transformers' flex attention layers call torch's flex_attention eagerly (see the module docstring)."""
    from transformers.integrations import flex_attention as integration

    def eager(query, key, value, training=False, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "called without torch.compile": on purpose here
            return flex_module.flex_attention(query, key, value, **kwargs)

    monkeypatch.setattr(integration, "compile_friendly_flex_attention", eager)


@pytest.fixture(scope="module")
def models(tokenizer):
    """The same tiny Llama twice: dense (SDPA, the reference path) and FlexAttention."""
    dense = tiny_llama(tokenizer, hidden_size=36, num_layers=2, num_heads=3, seed=3)
    flex = tiny_llama(tokenizer, hidden_size=36, num_layers=2, num_heads=3, seed=3)
    flex.set_attn_implementation(FLEX)
    return dense, flex


def layouts():
    for shared, packing in itertools.product((True, False), (True, False)):
        yield pytest.param(shared, packing, id=f"shared={shared}-packing={packing}")


@pytest.mark.parametrize(("shared", "packing"), list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_mask_mod_is_the_dense_mask_pair_by_pair(shapes, shared, packing):
    batch = pack(make_examples(shapes), PAD, shared_prompt=shared, packing=packing, row_length=50)
    rows, width = batch.unit_ids.shape
    b = torch.arange(rows)[:, None, None]
    q, kv = torch.arange(width)[None, :, None], torch.arange(width)[None, None, :]
    got = packed_mask_mod(batch.unit_ids, batch.segments)(b, torch.tensor(0), q, kv)
    assert torch.equal(got, batch.attention_mask[:, 0])


def test_block_mask_skips_the_tiles_no_query_sees():
    """Three long units in one row: the block mask keeps the diagonal tiles and drops those across units."""
    examples = make_examples([(100, (60, 40)), (90, (70, 50)), (120, (30, 30))], seed=2)
    batch = pack(examples, PAD, shared_prompt=True, packing=True, row_length=1000)
    assert batch.input_ids.shape[0] == 1
    block = packed_block_mask(batch)
    assert block.shape == (1, 1, batch.input_ids.shape[1], batch.input_ids.shape[1])
    tiles = block.to_dense()[0, 0]  # (L/128, L/128) 1 where a tile has any visible pair
    dense = batch.attention_mask[0, 0]
    n = tiles.shape[0]
    expected = torch.tensor([[bool(dense[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128].any()) for j in range(n)]
                             for i in range(n)])
    assert torch.equal(tiles.bool(), expected)
    assert int(tiles.sum()) < n * (n + 1) // 2  # fewer tiles than a causal mask's


@pytest.mark.usefixtures("eager_flex")
@pytest.mark.parametrize(("shared", "packing"), list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_flex_forward_equals_the_dense_path(models, shapes, shared, packing):
    """Forward only: torch has no FlexAttention backward on CPU (test_cpu_flex_backward_is_still_missing)."""
    dense, flex = models
    examples = make_examples(shapes, seed=5)
    batch = pack(examples, PAD, shared_prompt=shared, packing=packing, row_length=50)
    with torch.no_grad():
        got = sequence_logps(flex, batch, chunk_size=7)
        want = sequence_logps(dense, batch, chunk_size=7)
        plain = sequence_logps(dense, collate(examples, PAD))
    assert uses_flex(flex) and not uses_flex(dense)
    torch.testing.assert_close(got.logps, want.logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.logps, plain.logps, atol=1e-4, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only fact")
def test_cpu_flex_backward_is_still_missing():
    """Why `train.attention=flex` refuses to train on CPU. When torch adds the backward this fails: then lift the
    refusal (`trainer.assembly.check_training_attention`) and compare gradients on CPU too."""
    q = torch.randn(1, 2, 16, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="backward on CPU"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        flex_module.flex_attention(q, q, q)


def test_flex_refused_for_a_class_without_it(tmp_path, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"train.attention=flex: GPT2LMHeadModel has no FlexAttention"):
        load_model(str(tmp_path), ModelConfig(), attention="flex")


def test_flex_loads_a_llama_with_flex_attention(model_dir):
    assert uses_flex(load_model(str(model_dir), ModelConfig(), attention="flex"))
    assert not uses_flex(load_model(str(model_dir), ModelConfig()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="trains on CUDA")
def test_training_with_flex_on_cpu_is_refused_before_loading(tmp_path, hh_path, model_dir, monkeypatch):
    from dpokit.trainer import assembly
    from dpokit.trainer.config import build_config
    from dpokit.trainer.run import build_run

    for loader in ("tokenizer_of", "load_model"):  # what load_all reads first
        monkeypatch.setattr(assembly, loader, lambda *a, **k: pytest.fail("loaded before refusing"))
    cfg = build_config(None, {"model.name_or_path": str(model_dir), "data.path": str(hh_path),
                              "train.output_dir": str(tmp_path / "run"), "train.attention": "flex"})
    with pytest.raises(ConfigError, match=r"train.attention=flex trains on CUDA only"):
        build_run(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run wrote anything
