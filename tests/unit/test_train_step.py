"""One optimizer step on the single-process path: a NaN loss or an infinite gradient stops it before the optimizer
changes anything; DeepSpeed, which finds a bad norm only inside its own step, says what it did."""

from __future__ import annotations

import math
import socket
import subprocess
import sys

import pytest
import torch

from dpokit.data.collate import collate
from dpokit.data.records import Example
from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
from dpokit.losses import LossParams, parse_objective
from dpokit.models.tiny import tiny_llama
from dpokit.trainer.dist import Single
from dpokit.trainer.optim import NonFiniteError
from dpokit.trainer.step import Trainee, train_step

PAIRS = [
    ("\n\nHuman: how do I bake bread?\n\nAssistant:", " Mix flour, water and yeast, then bake it.", " No."),
    ("\n\nHuman: hi\n\nAssistant:", " Hello!", " What do you want? I am busy."),
]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def setup(tokenizer):
    """A tiny Llama trained reference-free with DPO's sigmoid loss (no reference model), AdamW, a constant lr."""
    examples = tokenize_examples([Example(p, (c, r)) for p, c, r in PAIRS], tokenizer,
                                 TokenizeSettings(max_length=48)).examples
    policy = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return policy, [collate(examples, tokenizer.pad_token_id)], optimizer, scheduler


def trainee(policy, beta: float = 0.1) -> Trainee:
    return Trainee(policy=policy, reference=None, objective=parse_objective("sigmoid", reference_free=True),
                   params=LossParams(beta=beta))


def weights(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in policy.named_parameters()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_the_default_process_group_is_one_process(setup):
    policy = setup[0]
    group = trainee(policy).parallel
    assert isinstance(group, Single) and (group.world, group.rank, group.is_main, group.sharded) == (1, 0, True, False)
    assert group.sum([1.5, 2.0]) == [1.5, 2.0] and group.any(True) and not group.any(False)
    assert group.replica_digests(policy) == group.replica_digests(policy) and len(group.replica_digests(policy)) == 1


def test_a_nan_loss_stops_before_the_optimizer_step(setup):
    """A good step moves the weights (so "unchanged" below means something); a step whose loss is NaN (β = NaN makes
    every per-example loss NaN) raises, and the weights, the optimizer's state and the lr schedule stay as they were."""
    policy, batches, optimizer, scheduler = setup
    before = weights(policy)
    good = train_step(trainee(policy), batches, optimizer, scheduler, max_grad_norm=1.0)
    assert math.isfinite(good["loss"]) and good["grad_norm"] > 0
    after_good = weights(policy)
    assert any(not torch.equal(before[n], after_good[n]) for n in before)

    with pytest.raises(NonFiniteError, match=r"non-finite loss \(nan\); the optimizer step was not taken"):
        train_step(trainee(policy, beta=float("nan")), batches, optimizer, scheduler, max_grad_norm=1.0)
    assert_same(weights(policy), after_good)
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}  # AdamW stepped once: the good step
    assert scheduler.last_epoch == 1


def test_an_infinite_gradient_with_a_finite_loss_stops_before_the_step(setup):
    """The gradient check on its own: the loss is finite, one parameter's gradient is scaled to infinity."""
    policy, batches, optimizer, scheduler = setup
    before = weights(policy)
    policy.get_input_embeddings().weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(inf\); the optimizer step was not taken"):
        train_step(trainee(policy), batches, optimizer, scheduler, max_grad_norm=1.0)
    assert_same(weights(policy), before)
    assert not optimizer.state and all(p.grad is None for p in policy.parameters())  # cleared, never applied


DEEPSPEED_SCRIPT = """
import os, torch, deepspeed
from dpokit.trainer.zero import deepspeed_step
from dpokit.trainer.optim import NonFiniteError
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="{port}", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.distributed.init_process_group("gloo")
for stage in (2, 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    config = {{"zero_optimization": {{"stage": stage}}, "train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": 1, "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True,
              "steps_per_print": 2**31 - 1, "fp16": {{"enabled": False}}, "bf16": {{"enabled": False}}}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=config)

    def step(scale):
        engine.set_gradient_accumulation_boundary(True)
        engine.backward(engine(torch.ones(3, 4)).sum() * scale, scale_wrt_gas=False)
        return deepspeed_step(engine)

    def whole():
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            return [p.detach().clone() for p in engine.module.parameters()]

    assert float(step(1.0)) > 0  # a good step
    before = whole()
    try:
        step(float("inf"))
    except NonFiniteError as err:
        print(f"stage {{stage}}:", err, "| unchanged:", all(torch.equal(a, b) for a, b in zip(before, whole())))
"""


def test_deepspeed_reports_a_skipped_step_on_a_non_finite_gradient(tmp_path):
    """One process, ZeRO-2 and ZeRO-3 over gloo, fp32 (a few seconds, in a subprocess so that no process group is
    left in this one): DeepSpeed finds the bad norm inside its step and skips the step; the error says so, truly."""
    pytest.importorskip("deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "deepspeed_step.py"
    script.write_text(DEEPSPEED_SCRIPT.format(port=port))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("stage ")]  # DeepSpeed logs to stdout too
    assert lines == [f"stage {stage}: non-finite gradient norm (inf); DeepSpeed skipped the optimizer step, so the "
                     "weights are still those of the step before | unchanged: True" for stage in (2, 3)], done.stdout
