"""Every fast path on CUDA against the plain path, values and gradients, fp32 and bf16, at odd shapes; one DPO step
on CUDA equal to the same step on CPU. Skipped without CUDA (`benchmarks/gpu/run.sh` runs them on a lent GPU).

`DPOKIT_TEST_DEVICE=cpu` runs the same tests on the CPU instead (FlexAttention's gradient tests then skip: torch has
no FlexAttention backward on CPU), which is how this file was rehearsed before any GPU ran it.

Tolerances: fp32 as tests/unit/test_fast_paths.py's, loosened 10× for gradients because CUDA kernels (SDPA's
memory-efficient kernel, cuBLAS split-K) sum in other orders than the CPU; TF32 is switched off so fp32 means fp32.
bf16: tests/unit/test_bf16_paths.py's, derived there from bf16's 2⁻⁸ roundoff.
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch
from test_bf16_paths import GRAD_COS, GRAD_REL, SUM_ATOL, SUM_RTOL, TOKEN_ATOL
from test_fast_paths import ODD_PAIRS, PAD, RANKED, make_examples

from dpokit.data.batching import Layout
from dpokit.lm.attention import FLEX
from dpokit.lm.logprobs import sequence_logps
from dpokit.lm.reference import FrozenModel
from dpokit.losses import LossParams, parse_objective
from dpokit.models.tiny import tiny_llama
from dpokit.trainer.step import Trainee, train_step

DEVICE = torch.device(os.environ.get("DPOKIT_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")
ON_CPU = DEVICE.type == "cpu"


@pytest.fixture(autouse=True)
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(scope="module")
def cpu_model(tokenizer):
    return tiny_llama(tokenizer, hidden_size=36, num_layers=2, num_heads=3, seed=3).train()


def on_device(model: torch.nn.Module, attention: str = "sdpa", dtype: torch.dtype = torch.float32):
    moved = copy.deepcopy(model).to(DEVICE, dtype)
    moved.set_attn_implementation(attention)
    return moved


def layouts(chunks=(0, 7)):
    for shared, packing, chunk in itertools.product((True, False), (True, False), chunks):
        yield pytest.param(Layout(packing, shared, 50), chunk, id=f"shared={shared}-packing={packing}-chunk={chunk}")


def logps_and_grads(model, examples, layout: Layout, chunk: int, bf16: bool = False):
    model.zero_grad()
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
        out = sequence_logps(model, layout(examples, PAD, False), chunk_size=chunk)
    (out.logps * torch.linspace(0.5, 1.5, out.logps.numel(), device=DEVICE).view_as(out.logps)).sum().backward()
    return out, [p.grad.float() for p in model.parameters()]


def assert_grads_close(got, want, atol=1e-4, rtol=1e-3):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def assert_grads_near(got, want):
    """bf16: direction and size (test_bf16_paths.py)."""
    for g, w in zip(got, want, strict=True):
        assert (g - w).norm() <= GRAD_REL * w.norm()
        assert torch.nn.functional.cosine_similarity(g.flatten(), w.flatten(), dim=0) >= GRAD_COS


@pytest.mark.parametrize(("layout", "chunk"), list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_fast_paths_match_plain_fp32(cpu_model, shapes, layout, chunk):
    model, examples = on_device(cpu_model), make_examples(shapes)
    plain, plain_grads = logps_and_grads(model, examples, Layout(), chunk)
    fast, fast_grads = logps_and_grads(model, examples, layout, chunk)
    torch.testing.assert_close(fast.logps, plain.logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.token_logps[fast.token_mask], plain.token_logps[plain.token_mask],
                               atol=1e-5, rtol=1e-5)
    assert_grads_close(fast_grads, plain_grads)


@pytest.mark.parametrize("weights", [torch.float32, torch.bfloat16], ids=["fp32-weights", "bf16-weights"])
@pytest.mark.parametrize(("layout", "chunk"), list(layouts(chunks=(7,))))
def test_fast_paths_in_bf16_match_fp32_plain(cpu_model, layout, chunk, weights):
    examples = make_examples(RANKED, seed=1)
    plain, plain_grads = logps_and_grads(on_device(cpu_model), examples, Layout(), 0)
    fast, grads = logps_and_grads(on_device(cpu_model, dtype=weights), examples, layout, chunk, bf16=True)
    assert fast.logps.dtype == torch.float32
    torch.testing.assert_close(fast.token_logps[fast.token_mask], plain.token_logps[plain.token_mask],
                               atol=TOKEN_ATOL, rtol=0)
    torch.testing.assert_close(fast.logps, plain.logps.detach(), atol=SUM_ATOL, rtol=SUM_RTOL)
    assert_grads_near(grads, plain_grads)


@pytest.mark.skipif(ON_CPU, reason="torch has no FlexAttention backward on CPU")
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("shapes", "layout"), [(ODD_PAIRS, Layout(True, True, 50)), (RANKED, Layout(True, False, 64))],
                         ids=["pairs-shared-packed", "ranked3-packed"])
def test_flex_attention_matches_dense(cpu_model, shapes, layout, bf16):
    """train.attention=flex through transformers' compiled FlexAttention: values and gradients."""
    examples = make_examples(shapes, seed=2)
    dense, dense_grads = logps_and_grads(on_device(cpu_model), examples, layout, 7, bf16)
    flex, flex_grads = logps_and_grads(on_device(cpu_model, FLEX), examples, layout, 7, bf16)
    if bf16:
        torch.testing.assert_close(flex.logps, dense.logps, atol=SUM_ATOL, rtol=SUM_RTOL)
        assert_grads_near(flex_grads, dense_grads)
    else:
        torch.testing.assert_close(flex.logps, dense.logps, atol=1e-4, rtol=1e-5)
        assert_grads_close(flex_grads, dense_grads)


def one_step(model: torch.nn.Module, batch, device: torch.device) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One DPO step (sigmoid, a frozen reference ≠ policy, SGD so the update is the gradient itself)."""
    policy = copy.deepcopy(model).to(device).train()
    reference = copy.deepcopy(model).to(device)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(0.9)
    trainee = Trainee(policy=policy, reference=FrozenModel(reference, chunk_size=5),
                      objective=parse_objective("sigmoid"), params=LossParams(beta=0.5), chunk_size=5)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    metrics = train_step(trainee, [batch], optimizer, scheduler, max_grad_norm=1.0)
    return metrics, {n: p.detach().cpu() for n, p in policy.named_parameters()}


@pytest.mark.parametrize("layout", [Layout(), Layout(True, True, 64)], ids=["plain", "packed-shared"])
def test_a_dpo_step_equals_the_cpu_step(cpu_model, layout):
    batch = layout(make_examples(ODD_PAIRS, seed=3), PAD, False)
    cpu_metrics, cpu_weights = one_step(cpu_model, batch, torch.device("cpu"))
    dev_metrics, dev_weights = one_step(cpu_model, batch, DEVICE)
    for key in ("loss", "grad_norm", "logps/chosen", "logps/rejected"):
        assert dev_metrics[key] == pytest.approx(cpu_metrics[key], rel=1e-4, abs=1e-5), key
    for name, weight in cpu_weights.items():
        torch.testing.assert_close(dev_weights[name], weight, atol=1e-5, rtol=1e-4)
