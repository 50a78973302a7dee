"""Every loss TRL also has, against TRL's own code (1.16): the same per-token log-probs into both, loss and gradient.

TRL's `DPOTrainer._compute_loss` (and `CPOTrainer.cpo_loss`, `TPOTrainer._compute_loss`) runs unchanged on a stand-in
trainer: its models are fakes that return the per-token log-probs (or logits) chosen here, its accelerator is one
process. dpokit gets the same numbers as `LossInputs`. Skipped without trl (a test-only dependency).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from dpokit.losses import LossInputs, LossParams, parse_objective

trl = pytest.importorskip("trl")
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

B, T = 5, 7  # odd shapes; response lengths 1..T


def accelerator():
    return SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x,
                           unwrap_model=lambda m: m)


class FakeLM:
    """What TRL's fused-head forward returns, with the per-token log-probs given (0 off the completion)."""

    training, is_gradient_checkpointing, _modules = True, False, {}

    def __init__(self, token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor | None = None):
        self.token_logps = token_logps
        self.log_sum_sq_probs = log_sum_sq_probs

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.token_logps)
        sq = zeros if self.log_sum_sq_probs is None else self.log_sum_sq_probs
        return SimpleNamespace(log_probs=self.token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(),
                               log_sum_sq_probs=sq, aux_loss=None)


def tokens(seed: int = 0, b: int = B):
    """(b, 2, T) policy (a leaf with grad) and reference per-token log-probs, 0 off the (b, 2, T) mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (b, 2), generator=g)
    mask = torch.arange(T) < lengths[..., None]
    policy = (-2 * torch.rand(b, 2, T, generator=g) * mask).requires_grad_()
    reference = -2 * torch.rand(b, 2, T, generator=g) * mask
    return policy, reference, mask


def rows(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, T) -> TRL's (2B, T): all chosen rows, then all rejected rows."""
    return torch.cat([x[:, 0], x[:, 1]])


def trl_dpo(loss_type: list[str], policy, reference, mask, sum_sq=None, **args) -> torch.Tensor:
    """TRL's loss; `sum_sq` (B, 2, T): per-token log Σ_v πθ(v)², given to its WPO weighting (use_weighting)."""
    n = 2 * policy.shape[0]
    completion = torch.cat([torch.zeros(n, 1, dtype=torch.long), rows(mask).long()], dim=1)  # a prompt column
    config = {"beta": 0.1, "label_smoothing": 0.0, "ld_alpha": None, "f_divergence_type": "reverse_kl",
              "f_alpha_divergence_coef": 0.5, "discopop_tau": 0.05, "loss_weights": None, **args}
    fake = SimpleNamespace(
        model=FakeLM(rows(policy) * rows(mask), None if sum_sq is None else rows(sum_sq)),
        ref_model=FakeLM(rows(reference)), accelerator=accelerator(),
        aux_loss_enabled=False, precompute_ref_logps=False, use_weighting=sum_sq is not None, loss_types=loss_type,
        loss_weights=config.pop("loss_weights") or [1.0] * len(loss_type),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=config["discopop_tau"]), **config,
    )
    inputs = {"input_ids": torch.zeros_like(completion), "attention_mask": torch.ones_like(completion),
              "completion_mask": completion}
    return DPOTrainer._compute_loss(fake, fake.model, inputs, return_outputs=False)


def dpokit(expr: str, policy, reference, mask, ld_alpha=None, reference_free=False, sum_sq=None,
           **params) -> torch.Tensor:
    """dpokit's loss; with `sum_sq` (B, 2, T), WPO's weighting on its masked sums, unclamped as TRL 1.x."""
    policy = policy * mask  # as the log-prob layer gives them: no gradient reaches a masked position
    inputs = LossInputs(policy_logps=policy.sum(-1), num_tokens=mask.sum(-1), reference_logps=reference.sum(-1),
                        policy_token_logps=policy, token_mask=mask, reference_token_logps=reference,
                        log_sum_sq_probs=None if sum_sq is None else (sum_sq * mask).sum(-1))
    objective = replace(parse_objective(expr, reference_free=reference_free), ld_alpha=ld_alpha,
                        use_weighting=sum_sq is not None, wpo_clamp=False)
    return objective(inputs, LossParams(**params)).losses.mean()


def assert_same_loss_and_grad(ours_fn, theirs_fn, seed: int = 0, b: int = B) -> None:
    policy, reference, mask = tokens(seed, b)
    theirs = theirs_fn(policy, reference, mask)
    (g_theirs,) = torch.autograd.grad(theirs, policy)
    ours = ours_fn(policy, reference, mask)
    (g_ours,) = torch.autograd.grad(ours, policy)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g_ours, g_theirs)


# name -> (dpokit params, TRL args); the names are the same in both
SHARED = {
    "sigmoid": ({}, {}),
    "hinge": ({}, {}),
    "ipo": ({}, {}),
    "robust": ({"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
    "sft": ({}, {}),
    "sigmoid_norm": ({}, {}),
    "exo_pair": ({"label_smoothing": 1e-3}, {"label_smoothing": 1e-3}),
    "nca_pair": ({}, {}),
    "bco_pair": ({"bco_delta": "zero"}, {}),  # TRL 1.x dropped the running shift δ
    "sppo_hard": ({}, {}),
    "aot": ({"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
    "aot_unpaired": ({"label_smoothing": 0.1}, {"label_smoothing": 0.1}),
    "apo_zero": ({}, {}),
    "apo_down": ({}, {}),
    "discopop": ({"discopop_tau": 0.3}, {"discopop_tau": 0.3}),
}


@pytest.mark.parametrize("beta", [0.1, 0.7])
@pytest.mark.parametrize("name", sorted(SHARED))
def test_each_trl_loss_type_matches_trl(name: str, beta: float):
    ours, theirs = SHARED[name]
    assert_same_loss_and_grad(lambda p, r, m: dpokit(name, p, r, m, beta=beta, **ours),
                              lambda p, r, m: trl_dpo([name], p, r, m, beta=beta, **theirs))


F_DIVERGENCE = ["sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop"]


@pytest.mark.parametrize(("kind", "coef"), [("forward_kl", 0.5), ("js_divergence", 0.5),
                                            ("alpha_divergence", 0.5), ("alpha_divergence", 0.3)])
@pytest.mark.parametrize("name", F_DIVERGENCE)
def test_f_divergences_match_trl(name: str, kind: str, coef: float):
    ours, theirs = SHARED[name]
    f = {"f_divergence_type": kind, "f_alpha_divergence_coef": coef}
    assert_same_loss_and_grad(lambda p, r, m: dpokit(name, p, r, m, beta=0.5, **ours, **f),
                              lambda p, r, m: trl_dpo([name], p, r, m, beta=0.5, **theirs, **f))


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("name", ["sigmoid", "ipo", "aot", "apo_zero"])
def test_ld_alpha_matches_trl(name: str, alpha: float):
    ours, theirs = SHARED[name]
    assert_same_loss_and_grad(lambda p, r, m: dpokit(name, p, r, m, ld_alpha=alpha, **ours),
                              lambda p, r, m: trl_dpo([name], p, r, m, ld_alpha=alpha, **theirs), seed=3)


def test_weighted_sum_matches_trl_loss_weights():
    """MPO-style: TRL's loss_type [sigmoid, bco_pair, sft] with loss_weights [0.8, 0.2, 1.0]."""
    assert_same_loss_and_grad(
        lambda p, r, m: dpokit("0.8*sigmoid + 0.2*bco_pair + sft", p, r, m, bco_delta="zero"),
        lambda p, r, m: trl_dpo(["sigmoid", "bco_pair", "sft"], p, r, m, loss_weights=[0.8, 0.2, 1.0]))


def sum_sq_like(mask: torch.Tensor, seed: int = 9) -> torch.Tensor:
    """(B, 2, T) per-token log Σ_v πθ(v)² in (−1.5, 0), off the mask too (both sides must ignore those)."""
    return -1.5 * torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed))


# TRL refuses use_weighting with the sorting losses, and raises on sft's (its `*=` writes into an expanded tensor):
# dpokit weighs sft's batch NLL as TRL's code means to, w_i·NLL (test_losses_wpo_bco.py checks the formula)
WPO = sorted(set(SHARED) - {"aot", "aot_unpaired", "sft"})


@pytest.mark.parametrize("name", WPO)
def test_use_weighting_matches_trl(name: str):
    """WPO on every TRL loss type it applies to (TRL 1.16 does not clamp the weights: wpo_clamp=false)."""
    ours, theirs = SHARED[name]
    policy, reference, mask = tokens(4)
    sq = sum_sq_like(mask)

    def dpokit_loss(p, r, m):
        return dpokit(name, p, r, m, sum_sq=sq, beta=0.3, **ours)

    def trl_loss(p, r, m):
        return trl_dpo([name], p, r, m, sum_sq=sq, beta=0.3, **theirs)

    if name == "hinge":  # TRL 1.16 scales relu's output in place (`*=`), so its backward raises: values only
        torch.testing.assert_close(dpokit_loss(policy, reference, mask), trl_loss(policy, reference, mask))
        return
    assert_same_loss_and_grad(dpokit_loss, trl_loss, seed=4)


def test_use_weighting_with_loss_weights_and_ld_alpha_matches_trl():
    """TRL weighs every term of its loss_type list alike, from the plain (not LD-DPO) sums."""
    _, _, mask = tokens(6)
    sq = sum_sq_like(mask, seed=2)
    assert_same_loss_and_grad(
        lambda p, r, m: dpokit("0.8*sigmoid + 0.2*bco_pair", p, r, m, sum_sq=sq, ld_alpha=0.5, bco_delta="zero"),
        lambda p, r, m: trl_dpo(["sigmoid", "bco_pair"], p, r, m, sum_sq=sq, ld_alpha=0.5, loss_weights=[0.8, 0.2]),
        seed=6)


def test_log_sum_sq_probs_match_trls_chunked_kernel():
    """dpokit's chunked head against TRL's own `ChunkedLogProbFunction` (its fused LM head, torch ops on CPU) at an
    odd shape: log π(y_t) and log Σ_v π(v)², (M, H, V) = (47, 31, 123), chunks of 10 vs TRL's vocabulary tiles."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from dpokit.lm.logprobs import chunked_token_stats

    torch.manual_seed(0)
    hidden, head = torch.randn(47, 31), torch.nn.Linear(31, 123)
    targets = torch.randint(0, 123, (47,))
    with torch.no_grad():
        theirs = ChunkedLogProbFunction.apply(hidden, head.weight, head.bias, targets, 1.0, 32, None, 1.0,
                                               ("log_sum_sq_probs",))
        ours = chunked_token_stats(hidden, head, targets, 10, sum_sq=True)
    torch.testing.assert_close(ours.logps, theirs[0])
    torch.testing.assert_close(ours.log_sum_sq_probs, theirs[2])


def test_cdpo_label_smoothing_matches_trl_aot_of_one_pair():
    """TRL 1.16's sigmoid ignores label_smoothing; its cDPO form survives in aot, whose sort of a single pair is the
    identity: dpokit's cdpo (and sigmoid with ε) must equal it there."""
    for name in ("cdpo", "sigmoid"):
        for seed in range(3):
            assert_same_loss_and_grad(lambda p, r, m, name=name: dpokit(name, p, r, m, label_smoothing=0.2),
                                      lambda p, r, m: trl_dpo(["aot"], p, r, m, label_smoothing=0.2), seed, b=1)


def test_ipo_summed_form_is_trl_ipo_on_summed_margins():
    """loss.ipo_per_token=false: (h − 1/(2β))² of summed log-ratios, TRL's ipo with every length 1."""
    policy, reference, mask = tokens(5)
    ours = dpokit("ipo", policy, reference, mask, ipo_per_token=False, beta=0.3)
    h = (policy.sum(-1) - reference.sum(-1)).detach()
    torch.testing.assert_close(ours.detach(), ((h[:, 0] - h[:, 1] - 1 / 0.6) ** 2).mean())


# --- the experimental trainers: CPO (AlphaPO, reference-free cDPO) and TPO ------------------------------------------


def cpo(loss_type: str, chosen, rejected, **args) -> torch.Tensor:
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    fake = SimpleNamespace(loss_type=loss_type, accelerator=accelerator(),
                           **{"beta": 0.1, "label_smoothing": 0.0, "simpo_gamma": 0.5, "alpha": 0.0, **args})
    return CPOTrainer.cpo_loss(fake, chosen, rejected)[0].mean()


@pytest.mark.parametrize("alpha", [0.25, -0.4, 1.0])
def test_alphapo_matches_trl_cpo(alpha: float):
    """TRL's CPOConfig(loss_type="alphapo") is simpo with cpo_alpha = 0 on per-token mean log-probs."""
    def ours(p, r, m):
        return dpokit("alphapo", p, r, m, beta=2.0, simpo_gamma=0.4, alphapo_alpha=alpha)

    def theirs(p, r, m):
        avg = (p * m).sum(-1) / m.sum(-1)
        return cpo("simpo", avg[:, 0], avg[:, 1], beta=2.0, simpo_gamma=0.4, alpha=alpha)

    assert_same_loss_and_grad(ours, theirs)


def test_simpo_matches_trl_cpo():
    assert_same_loss_and_grad(
        lambda p, r, m: dpokit("simpo", p, r, m, beta=2.0, simpo_gamma=0.4),
        lambda p, r, m: cpo("simpo", *((p * m).sum(-1) / m.sum(-1)).unbind(1), beta=2.0, simpo_gamma=0.4))


def test_reference_free_cdpo_matches_trl_cpo_sigmoid():
    assert_same_loss_and_grad(
        lambda p, r, m: dpokit("cdpo", p, r, m, reference_free=True, label_smoothing=0.2, beta=0.3),
        lambda p, r, m: cpo("sigmoid", *(p * m).sum(-1).unbind(1), label_smoothing=0.2, beta=0.3))


def test_tpo_matches_trl_tpo():
    """TRL's TPO batch is [chosen, rejected, reference (gold)]; dpokit's ranked triple is (gold, chosen, rejected).
    The fake model returns logits; both sides take log-probs from them (TRL by its own selective log-softmax)."""
    from trl.experimental.tpo.tpo_trainer import TPOTrainer

    g, v = torch.Generator().manual_seed(7), 11
    lengths = torch.randint(1, T + 1, (B, 3), generator=g)
    mask = torch.arange(T) < lengths[..., None]  # (B, 3, T) in TRL's order: chosen, rejected, gold
    ids = torch.randint(0, v, (3 * B, T + 1), generator=g)
    logits = torch.randn(3 * B, T + 1, v, generator=g, requires_grad=True)
    completion = torch.cat([torch.zeros(3 * B, 1, dtype=torch.long), torch.cat(mask.unbind(1)).long()], dim=1)
    model = SimpleNamespace(training=True)
    fake = SimpleNamespace(model=model, accelerator=accelerator(), loss_type="sigmoid", beta=0.05,
                           label_smoothing=0.1, tpo_alpha=0.7, tpo_l_gamma=0.5, _total_train_tokens=0, _tp_size=1,
                           _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
    theirs = TPOTrainer._compute_loss(fake, lambda **kw: SimpleNamespace(logits=logits), inputs, False)
    (g_theirs,) = torch.autograd.grad(theirs, logits)

    per_token = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    per_token = per_token * completion[:, 1:]
    chosen, rejected, gold = per_token.view(3, B, T)
    policy = torch.stack([gold, chosen, rejected], dim=1)
    order = mask[:, [2, 0, 1]]
    inputs_ours = LossInputs(policy_logps=policy.sum(-1), num_tokens=order.sum(-1))
    ours = parse_objective("tpo")(inputs_ours, LossParams(beta=0.05, label_smoothing=0.1, tpo_alpha=0.7)).losses.mean()
    (g_ours,) = torch.autograd.grad(ours, logits)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(g_ours, g_theirs)
