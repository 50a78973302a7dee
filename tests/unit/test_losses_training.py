"""Every loss trains the tiny model: finite, and the loss on the training batch falls over a few AdamW steps; the
objective's inputs come from the trainer's own step (policy engine, a frozen reference copy, per-token log-probs).
Also TR-DPO's reference updates (`reference.sync`): the reference's weights after a step are the formula's."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from dpokit.core.errors import ConfigError
from dpokit.data.collate import collate
from dpokit.data.packing import pack
from dpokit.data.records import Example
from dpokit.data.tokenize import TokenizeSettings, tokenize_examples
from dpokit.lm.reference import FrozenModel
from dpokit.losses import LOSSES, LossParams, parse_objective
from dpokit.models.tiny import tiny_llama
from dpokit.trainer.assembly import plan_reference
from dpokit.trainer.config import Config
from dpokit.trainer.step import Trainee, forward, train_step
from dpokit.trainer.sync import ReferenceSync

pytestmark = pytest.mark.usefixtures("one_thread")

TRIPLES = [
    ("\n\nHuman: how do I bake bread?\n\nAssistant:", " Knead flour, water, yeast; bake.", " Mix and bake it.", " No."),
    ("\n\nHuman: hi\n\nAssistant:", " Hello! How can I help?", " Hello!", " What do you want? I am busy."),
    ("\n\nHuman: 2+2?\n\nAssistant:", " 4.", " It is 4, I think.", " 5"),
]
NEW = ["sigmoid_norm", "exo_pair", "discopop", "nca_pair", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
       "apo_zero", "apo_down", "alphapo", "tpo", "ipo", "sft"]
VARIANTS = {  # name -> (objective expression, params, ld_alpha)
    **{name: (name, {}, None) for name in NEW},
    "exo_pair": ("exo_pair", {"label_smoothing": 1e-3}, None),
    "ipo (summed)": ("ipo", {"ipo_per_token": False}, None),
    "sigmoid (forward_kl)": ("sigmoid", {"f_divergence_type": "forward_kl"}, None),
    "hinge (js_divergence)": ("hinge", {"f_divergence_type": "js_divergence"}, None),
    "sigmoid (alpha_divergence)": ("sigmoid", {"f_divergence_type": "alpha_divergence"}, None),
    "sigmoid (ld_alpha)": ("sigmoid", {}, 0.5),
    "mpo": ("0.8*sigmoid + 0.2*bco_pair + sft", {}, None),
    "bco_pair (running δ)": ("bco_pair", {"bco_delta": "running"}, None),
    "sigmoid (wpo)": ("sigmoid", {"use_weighting": True}, None),
    "mpo (wpo)": ("0.8*sigmoid + 0.2*bco_pair + sft", {"use_weighting": True}, None),
}


def objective_of(expr: str, extra: dict, ld_alpha: float | None):
    """The objective as `objective_from_config` builds it: its modifiers (LD-DPO, WPO) from the params."""
    return replace(parse_objective(expr), ld_alpha=ld_alpha, use_weighting=extra.get("use_weighting", False),
                   wpo_clamp=extra.get("wpo_clamp", True))


def examples(tokenizer, k: int):
    rows = [Example(p, responses[:k] if k == 3 else responses[1:]) for p, *responses in TRIPLES]
    return tokenize_examples(rows, tokenizer, TokenizeSettings(max_length=48)).examples


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_loss_trains_the_tiny_model(tokenizer, variant: str):
    expr, extra, ld_alpha = VARIANTS[variant]
    objective = objective_of(expr, extra, ld_alpha)
    k = objective.num_responses or 2
    policy = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).train()
    reference = FrozenModel(copy.deepcopy(policy)) if objective.needs_reference else None
    params = LossParams(beta=0.5 if variant != "alphapo" else 2.0, **extra)
    trainee = Trainee(policy=policy, reference=reference, objective=objective, params=params, chunk_size=7)
    batch = pack(examples(tokenizer, k), tokenizer.pad_token_id, shared_prompt=True, packing=True)
    lr = 3e-3 if variant in ("sppo_hard", "ipo (summed)") else 2e-2  # squared losses of summed log-ratios: steep
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    losses = [train_step(trainee, [batch], optimizer, scheduler, 10.0)["loss"] for _ in range(6)]
    with torch.no_grad():
        final = forward(trainee, batch).out.losses.mean().item()
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert final < losses[0], (losses, final)


@pytest.mark.parametrize("name", [n for n in NEW if LOSSES[n].needs_reference]
                         + ["sigmoid (ld_alpha)", "sigmoid (wpo)", "mpo (wpo)"])
def test_fast_path_gives_the_plain_paths_loss_and_gradient(tokenizer, name: str):
    """Packed rows with a shared prompt and a chunked head against plain padded rows, loss and gradients (through
    the trainer's `forward`: WPO's log Σ_v πθ(v)² asked of the engine; BCO's δ is 0, no training step taken)."""
    expr, extra, ld_alpha = VARIANTS.get(name, (name, {}, None))
    objective = objective_of(expr, extra, ld_alpha)
    policy = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=1).train()
    reference = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=2)
    trainee = Trainee(policy=policy, reference=FrozenModel(reference), objective=objective,
                      params=LossParams(**{"beta": 0.5, "label_smoothing": 1e-3, **extra}), chunk_size=5)
    data = examples(tokenizer, 2)
    results = []
    pad = tokenizer.pad_token_id
    for batch in (collate(data, pad), pack(data, pad, shared_prompt=True, packing=True)):
        policy.zero_grad()
        loss = forward(trainee, batch).out.losses.mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in policy.parameters()]))
    (plain, plain_grads), (fast, fast_grads) = results
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bco_delta_in_train_step_is_the_running_mean_of_micro_batch_rewards(tokenizer):
    """Two steps of two micro-batches: after step s, δ = the mean of the 2s micro-batches' mean rewards
    β·log πθ/πref over chosen and rejected, each computed with the weights of its step (read here before it)."""
    policy = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).train()
    trainee = Trainee(policy=policy, reference=FrozenModel(copy.deepcopy(policy)), objective=parse_objective(
        "bco_pair"), params=LossParams(beta=0.5, bco_delta="running"), chunk_size=7)
    data, pad = examples(tokenizer, 2), tokenizer.pad_token_id
    micro = [collate(data[:2], pad), pack(data[2:], pad, shared_prompt=True, packing=True)]
    optimizer = torch.optim.AdamW(policy.parameters(), lr=2e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []
    for _ in range(2):
        with torch.no_grad():
            seen += [forward(trainee, batch).out.rewards.mean().item() for batch in micro]
        metrics = train_step(trainee, micro, optimizer, scheduler, 10.0)
        assert metrics["running_mean/bco_pair"] == pytest.approx(sum(seen) / len(seen), abs=1e-6)
    assert trainee.loss_state.means["bco_pair"].count == 4
    assert abs(seen[-1] - seen[0]) > 1e-3  # the rewards moved, so δ is a mean of different numbers


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_reference_sync_moves_the_reference_as_the_formula_says(tokenizer, mode: str):
    """every = 2: after step 1 the reference is unchanged; after step 2 it is α·πθ + (1 − α)·πref (soft, α = 0.6)
    or πθ (hard), parameter by parameter, with πref the starting weights."""
    policy = tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0).train()
    reference = FrozenModel(copy.deepcopy(policy))
    start = {n: p.detach().clone() for n, p in reference.model.named_parameters()}
    sync = ReferenceSync(reference.model, policy, mode, 0.6, every=2)
    trainee = Trainee(policy=policy, reference=reference, objective=parse_objective("sigmoid"), params=LossParams())
    batch = collate(examples(tokenizer, 2), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in (1, 2):
        train_step(trainee, [batch], optimizer, scheduler, 10.0)
        sync.after_step(step)
        now = dict(reference.model.named_parameters())
        if step == 1:
            assert all(torch.equal(now[n], start[n]) for n in start)
    live = dict(policy.named_parameters())
    for name, before in start.items():
        expected = live[name].detach() if mode == "hard" else 0.6 * live[name].detach() + 0.4 * before
        torch.testing.assert_close(now[name], expected)
    assert any(not torch.equal(now[n], start[n]) for n in start)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"reference.mode": "precomputed"}, "reference.mode=precomputed caches the starting reference"),
        ({"model.lora.enabled": True}, "the reference is the LoRA policy with its adapter off"),
        ({"model.lora.enabled": True, "reference.mode": "copy"}, "a LoRA policy's parameters"),
        ({"train.fsdp": True}, "with train.fsdp each process holds a shard"),
        ({"train.resume": "latest"}, "checkpoints do not hold the updated reference"),
    ],
)
def test_reference_sync_is_refused_where_it_cannot_work(settings: dict, message: str):
    """Before any model loads (the model path does not exist)."""
    cfg = Config()
    cfg.model.name_or_path, cfg.reference.sync.mode = "no-such-model", "soft"
    for key, value in settings.items():
        section, *rest = key.split(".")
        target = getattr(cfg, section)
        for part in rest[:-1]:
            target = getattr(target, part)
        setattr(target, rest[-1], value)
    with pytest.raises(ConfigError, match=f"^reference.sync.mode=soft \\(TR-DPO\\) cannot work here: {message}"):
        plan_reference(cfg, parse_objective("sigmoid"))
    with pytest.raises(ConfigError, match="uses none"):
        plan_reference(Config(reference=replace(Config().reference, sync=cfg.reference.sync)), parse_objective("simpo"))
