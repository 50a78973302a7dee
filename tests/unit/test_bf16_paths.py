"""bf16 on CPU: every layout under autocast, with fp32 or bf16 weights, against the fp32 plain path.

What bf16 means in dpokit: `train.precision=bf16` runs forward and backward under `torch.autocast(bfloat16)` with
fp32 weights and optimizer state; `model.dtype=bfloat16` stores the weights in bf16 too. In both, the chunked LM
head's matmul runs in bf16 and its (chunk, V) logits are upcast to fp32 before the log-softmax
(`lm.token_kl.final_logits`), so the logsumexp over the vocabulary and the sums over tokens accumulate in fp32.

Tolerances, from bf16's unit roundoff u = 2⁻⁸ ≈ 3.9e-3 (8 significant bits):
- per token 2e-2: a token's log-prob is z_y − logsumexp(z); rounding the logits (|z| ≲ 5 for this tiny model)
  moves each by up to |z|·u ≈ 2e-2, and fp32 accumulation adds nothing of that order (measured: ≤ 1.5e-3);
- per response sum: 1e-2 relative + 5e-2 absolute: up to 40 tokens whose rounding errors are independent (√40·2e-3
  ≈ 1.3e-2 expected; measured ≤ 7.6e-3);
- gradients, per parameter tensor: ‖g − g_fp32‖ ≤ 5% of ‖g_fp32‖ (measured ≤ 1.2%) and cosine ≥ 0.999 (measured
  ≥ 0.99993): bf16 gradients are not close elementwise, so direction and size are what is checked.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from test_fast_paths import ODD_PAIRS, PAD, RANKED, make_examples

from dpokit.data.batching import Layout
from dpokit.lm.logprobs import chunked_token_logps, sequence_logps
from dpokit.models.tiny import tiny_llama

TOKEN_ATOL = 2e-2
SUM_RTOL, SUM_ATOL = 1e-2, 5e-2
GRAD_REL, GRAD_COS = 5e-2, 0.999


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(tokenizer, hidden_size=36, num_layers=2, num_heads=3, seed=3).train()


def layouts():
    for shared, packing in itertools.product((True, False), (True, False)):
        yield pytest.param(Layout(packing, shared, 50), id=f"shared={shared}-packing={packing}")


def run(model: torch.nn.Module, batch, autocast: bool):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = sequence_logps(model, batch, chunk_size=7)
    out.logps.sum().backward()
    return out, [p.grad.float() for p in model.parameters()]


@pytest.mark.parametrize("weights", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_bf16_autocast_matches_fp32_plain(model, shapes, layout, weights):
    examples = make_examples(shapes, seed=1)
    plain, plain_grads = run(model, Layout()(examples, PAD, False), autocast=False)
    low = model if weights == "fp32" else copy.deepcopy(model).bfloat16()
    got, grads = run(low, layout(examples, PAD, False), autocast=True)
    assert got.logps.dtype == torch.float32 and got.token_logps.dtype == torch.float32
    torch.testing.assert_close(got.token_logps[got.token_mask], plain.token_logps[plain.token_mask],
                               atol=TOKEN_ATOL, rtol=0)
    torch.testing.assert_close(got.logps, plain.logps.detach(), atol=SUM_ATOL, rtol=SUM_RTOL)
    for name_param, g, want in zip(model.named_parameters(), grads, plain_grads, strict=True):
        assert (g - want).norm() <= GRAD_REL * want.norm(), name_param[0]
        assert torch.nn.functional.cosine_similarity(g.flatten(), want.flatten(), dim=0) >= GRAD_COS, name_param[0]


def test_chunked_head_in_bf16_accumulates_in_fp32():
    """(M, H, V) = (47, 31, 4099), bf16 hidden and head: fp32 log-probs within bf16 rounding of the fp32 result."""
    torch.manual_seed(0)
    hidden = torch.randn(47, 31)
    head = torch.nn.Linear(31, 4099, bias=False)
    targets = torch.randint(0, 4099, (47,))
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    got = chunked_token_logps(hidden.bfloat16(), copy.deepcopy(head).bfloat16(), targets, chunk_size=10)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=TOKEN_ATOL, rtol=0)
