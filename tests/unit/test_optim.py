"""The optimizer dpokit builds: AdamW runs torch's fused kernel where every parameter allows it, and it moves the
weights as torch's plain (for-loop) AdamW does, to fp32 rounding, over several steps with weight decay and a frozen
parameter."""

from __future__ import annotations

import pytest
import torch

from dpokit.trainer.optim import optimizer_for

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed: int) -> torch.nn.Module:
    """Odd shapes, a frozen layer (no gradient, so not in the optimizer) and a bias."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(37, 13), torch.nn.Linear(13, 29), torch.nn.Tanh(),
                                torch.nn.Linear(29, 37, bias=False))
    model[1].weight.requires_grad_(False)
    return model


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 6) -> list[float]:
    tokens = torch.randint(0, 37, (5, 7), generator=torch.Generator().manual_seed(1))  # one batch, fitted
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_adamw_is_fused_where_every_parameter_allows_it():
    optimizer = optimizer_for(_model(0).parameters(), "adamw", lr=1e-2)
    assert optimizer.param_groups[0]["fused"] is True
    assert len(optimizer.param_groups[0]["params"]) == 3  # the frozen weight is left out
    assert not optimizer_for(_model(0).parameters(), "rmsprop", lr=1e-2).param_groups[0]["foreach"]


def test_fused_adamw_moves_the_weights_as_plain_adamw_does():
    fused_model, plain_model = _model(0), _model(0)
    fused = optimizer_for(fused_model.parameters(), "adamw", lr=3e-2, weight_decay=0.1)
    plain = torch.optim.AdamW([p for p in plain_model.parameters() if p.requires_grad], lr=3e-2, weight_decay=0.1,
                              foreach=False)
    fused_losses, plain_losses = _train(fused_model, fused), _train(plain_model, plain)
    assert fused_losses == pytest.approx(plain_losses, rel=1e-5)
    assert plain_losses[-1] < plain_losses[0]  # the steps did move the weights
    for (name, a), (_, b) in zip(fused_model.named_parameters(), plain_model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for p, q in zip(fused.param_groups[0]["params"], plain.param_groups[0]["params"], strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused.state[p][key], plain.state[q][key], rtol=1e-5, atol=1e-8)
