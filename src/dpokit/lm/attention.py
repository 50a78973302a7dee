"""Packed rows' attention without a dense (R, 1, L, L) mask: a FlexAttention block mask (`train.attention=flex`).

The dense boolean mask of `data.packing.dense_mask` is the reference path: exact, but SDPA given an arbitrary mask
leaves its fused kernels for the masked math path, and the mask itself is O(L²) per row. FlexAttention takes the same
rule as a `mask_mod(b, h, q, kv) -> bool` over the per-column unit and segment ids (O(L) per row), and
`create_block_mask` turns it into a BlockMask whose fully masked (128, 128) tiles are never computed: across
documents and between one example's responses most tiles are empty.

transformers does the rest: a model loaded with `attn_implementation="flex_attention"` (Llama, Qwen2, ... where
the class sets `_supports_flex_attn`) passes a 4D BlockMask handed in as `attention_mask` straight to its attention
layers (`masking_utils._preprocess_mask_arguments`), which run `torch.compile(flex_attention)`.

Status (torch 2.13 CPU, tests/unit/test_flex_attention.py): the forward runs on CPU, eager and compiled, and
equals the dense path; torch has no FlexAttention backward on CPU (NotImplementedError), so training with it needs
CUDA, and its CUDA parity tests (tests/unit/test_cuda_paths.py) have not run yet. Hence opt-in and experimental.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpokit.data.packing import PackedBatch

FLEX = "flex_attention"  # transformers' attn_implementation name


def uses_flex(model: torch.nn.Module) -> bool:
    """Whether `model` was loaded with transformers' FlexAttention (`models.loading.ATTENTION`)."""
    return getattr(model.config, "_attn_implementation", None) == FLEX


def packed_mask_mod(unit_ids: Tensor, segments: Tensor):
    """The packed layout's visibility rule per (row b, query q, key kv): `dense_mask`'s, one pair at a time.

    Args:
        unit_ids: (R, L) long, the unit of each column, -1 on padding.
        segments: (R, L) long, 0 in a prompt, j + 1 in response j.

    Returns:
        mask_mod(b, h, q, kv) -> bool tensor: causal, the same unit, the key in the prompt or in the query's own
        response; a padding query sees only itself (no empty row, whose softmax would be NaN).
    """

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        unit_q, unit_kv = unit_ids[b, q], unit_ids[b, kv]
        seg_q, seg_kv = segments[b, q], segments[b, kv]
        real = unit_q >= 0
        visible = (q >= kv) & (unit_q == unit_kv) & ((seg_kv == 0) | (seg_q == seg_kv))
        return (real & visible) | (~real & (q == kv))

    return mask_mod


def packed_block_mask(batch: PackedBatch):
    """The BlockMask of `batch`'s rows, (R, 1, L, L), on the batch's device: what a FlexAttention model attends by.

    Built per batch (rows differ); `create_block_mask` evaluates `mask_mod` once per (row, q, kv) to find the
    non-empty tiles, a one-off cost beside the L² · layers · heads of attention itself.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    rows, width = batch.unit_ids.shape
    mod = packed_mask_mod(batch.unit_ids, batch.segments)
    return create_block_mask(mod, rows, None, width, width, device=batch.unit_ids.device)
