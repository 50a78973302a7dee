"""PPO's pure pieces against hand-derived numbers: per-token rewards, GAE, whitening, both losses, the KL controllers,
and the response-token layout of a forward."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import dpokit.rlhf.ppo
import dpokit.rlhf.ppo_trainer
from dpokit.rlhf.ppo import AdaptiveKL, FixedKL, gae, kl_penalised_rewards, moments, ppo_policy_loss, value_loss, whiten
from dpokit.rlhf.rollout import ActorCritic, FrozenActor, Rows, response_outputs


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_kl_penalty_at_every_token_and_the_score_at_the_last():
    # row 0: -0.1(-1 + 1.5) = -0.05; -0.1(-2 + 1) + 1.0 = 1.1; padding 0.  row 1: -0.1(-0.5 + 1) + 2.0 = 1.95
    rewards = kl_penalised_rewards(t([1.0, 2.0]), t([[-1, -2, 0], [-0.5, 7, 7]]), t([[-1.5, -1, 0], [-1, 0, 0]]),
                                   t([[1, 1, 0], [1, 0, 0]]), beta=0.1)
    torch.testing.assert_close(rewards, t([[-0.05, 1.1, 0], [1.95, 0, 0]]))


def test_a_response_without_tokens_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        kl_penalised_rewards(t([1.0]), t([[0.0]]), t([[0.0]]), t([[0.0]]), beta=0.1)


def test_gae_by_hand():
    # γ = 1, λ = 0.5, V = (0.5, 0.2, 0.4), r = (0, 0, 1):
    # δ2 = 1 - 0.4 = 0.6 = Â2;  δ1 = 0.4 - 0.2 = 0.2, Â1 = 0.2 + 0.5·0.6 = 0.5;  δ0 = 0.2 - 0.5 = -0.3, Â0 = -0.05
    # row 1 has one real token: Â0 = 0.3 - 0.1 (nothing after it), padding ignored whatever it holds
    out = gae(t([[0, 0, 1], [0.3, 2.0, 5.0]]), t([[0.5, 0.2, 0.4], [0.1, 9, 9]]), t([[1, 1, 1], [1, 0, 0]]),
              gamma=1.0, lam=0.5)
    torch.testing.assert_close(out.advantages, t([[-0.05, 0.5, 0.6], [0.2, 0, 0]]))
    torch.testing.assert_close(out.returns, t([[0.45, 0.7, 1.0], [0.3, 0, 0]]))


def test_gae_limits_monte_carlo_and_td():
    torch.manual_seed(0)
    rewards, values, mask = torch.randn(3, 5), torch.randn(3, 5), torch.ones(3, 5)
    mc = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(mc.advantages, rewards.flip(1).cumsum(1).flip(1) - values)  # Σ_{u>=t} r_u − V_t
    td = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = torch.cat([values[:, 1:], torch.zeros(3, 1)], 1)
    torch.testing.assert_close(td.advantages, rewards + 0.9 * next_values - values)  # δ_t
    discounted = gae(t([[0, 1]]), t([[0, 0]]), t([[1, 1]]), gamma=0.9, lam=1.0)
    torch.testing.assert_close(discounted.advantages, t([[0.9, 1.0]]))


def test_whiten_over_real_tokens_and_across_processes():
    values, mask = t([[1, 2], [3, 100]]), t([[1, 1], [1, 0]])
    torch.testing.assert_close(whiten(values, mask), t([[-1, 0], [1, 0]]), atol=1e-6, rtol=0)  # mean 2, var 1
    halves = [moments(values[:1], mask[:1]), moments(values[1:], mask[1:])]  # as two processes would sum them
    summed = tuple(a + b for a, b in zip(*halves, strict=True))
    torch.testing.assert_close(whiten(values[1:], mask[1:], summed), t([[1, 0]]), atol=1e-6, rtol=0)


def test_clipped_surrogate_by_hand():
    # ρ = (1.5, 0.5, 1.1), Â = (1, -1, 2), ε = 0.2:
    # -min(1.5, 1.2) = -1.2;  -min(-0.5, -0.8) = 0.8;  -min(2.2, 2.2) = -2.2;  mean -2.6 / 3
    old = t([[-1.0, -2.0, -0.5]])
    new = (old + torch.log(t([[1.5, 0.5, 1.1]])).clone()).requires_grad_()
    out = ppo_policy_loss(new, old, t([[1, -1, 2]]), t([[1, 1, 1]]), clip_range=0.2)
    assert out.loss.item() == pytest.approx(-2.6 / 3, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(2 / 3)
    kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1)) / 3
    assert out.approx_kl.item() == pytest.approx(kl, abs=1e-6)
    out.loss.backward()
    # clipped tokens give no gradient; the third: d/dlogπ (-Â ρ / 3) = -2 · 1.1 / 3
    torch.testing.assert_close(new.grad, t([[0, 0, -2 * 1.1 / 3]]))


def test_surrogate_keeps_the_pessimistic_unclipped_term_and_ignores_padding():
    # ρ = 0.5 < 1 - ε with Â = 1 > 0: min(0.5, 0.8) = 0.5, unclipped, so its gradient flows; padding holds junk
    old = t([[0.0, 0.0]])
    new = t([[math.log(0.5), 5.0]]).requires_grad_()
    out = ppo_policy_loss(new, old, t([[1.0, 100.0]]), t([[1, 0]]), clip_range=0.2, num_tokens=2.0)
    assert out.loss.item() == pytest.approx(-0.5 / 2)  # divided by the given global count, not this batch's 1
    out.loss.backward()
    torch.testing.assert_close(new.grad, t([[-0.5 / 2, 0.0]]))


def test_clipped_value_loss_by_hand():
    # V = (1, 0), V_old = (0.5, 0.5), R = (2, 0), ε_v = 0.2: V_clip = (0.7, 0.3)
    # max((1-2)², (0.7-2)²) = 1.69;  max(0², 0.3²) = 0.09;  ½ · (1.69 + 0.09) / 2 = 0.445
    values, old, returns, mask = t([[1.0, 0.0]]), t([[0.5, 0.5]]), t([[2.0, 0.0]]), t([[1, 1]])
    assert value_loss(values, old, returns, mask, 0.2).item() == pytest.approx(0.445)
    assert value_loss(values, old, returns, mask, None).item() == pytest.approx(0.25)  # ½ (1 + 0) / 2


def test_adaptive_kl_follows_ziegler_et_al():
    controller = AdaptiveKL(0.1, target=6.0, horizon=10000)
    controller.update(kl=12.0, num_samples=64)  # e = clip(12/6 - 1) = 0.2
    assert controller.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    controller.update(kl=5.4, num_samples=64)  # e = -0.1
    assert controller.beta == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000) * (1 - 0.1 * 64 / 10000))
    restored = AdaptiveKL(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.beta == controller.beta
    fixed = FixedKL(0.3)
    fixed.update(kl=100.0, num_samples=64)
    assert fixed.beta == 0.3


def test_rows_place_each_response_token_after_its_prompt():
    rows = Rows.build([[5, 6, 7], [4]], [[8, 9], [3]], pad_id=0)
    assert rows.input_ids.tolist() == [[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]]
    assert rows.positions.tolist() == [[2, 3], [0, 0]]  # position P-1+j predicts response token j
    assert rows.tokens.tolist() == [[8, 9], [3, 0]] and rows.mask.tolist() == [[1, 1], [1, 0]]


def test_response_outputs_match_unpadded_forwards():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=24, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, eos_token_id=0)
    model = LlamaForCausalLM(config).eval()
    prompts, responses = [[5, 6, 7], [4]], [[8, 9], [3]]
    rows = Rows.build(prompts, responses, pad_id=0)
    actor, ref = ActorCritic(model), FrozenActor(model)
    with torch.no_grad():
        torch.nn.init.normal_(actor.value_head.weight)
        got, got_ref = response_outputs(actor, rows), response_outputs(ref, rows)
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            out = model(torch.tensor([p + r]), output_hidden_states=True)
            logp = out.logits[0, len(p) - 1:-1].log_softmax(-1)
            want = logp.gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
            torch.testing.assert_close(got.logprobs[i, :len(r)], want, atol=1e-5, rtol=0)
            torch.testing.assert_close(got_ref.logprobs[i, :len(r)], want, atol=1e-5, rtol=0)
            entropy = -(logp.exp() * logp).sum(-1)
            torch.testing.assert_close(got.entropy[i, :len(r)], entropy, atol=1e-5, rtol=0)
            value = actor.value_head(out.hidden_states[-1][0, len(p) - 1:-1]).squeeze(-1)
            torch.testing.assert_close(got.values[i, :len(r)], value, atol=1e-5, rtol=0)
    assert got.logprobs[1, 1] == 0 and got.values[1, 1] == 0 and got_ref.values.abs().sum() == 0


def test_value_head_starts_at_zero():
    config = LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    head = ActorCritic(LlamaForCausalLM(config)).value_head
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0


@pytest.mark.parametrize("module", [dpokit.rlhf.ppo, dpokit.rlhf.ppo_trainer])
def test_docstring_examples(module):
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_config_refuses_bad_settings_naming_the_key(tmp_path):
    from dpokit.core import settings as config_io
    from dpokit.core.errors import ConfigError
    from dpokit.rlhf.ppo_config import PPOConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    good = {"model.name_or_path": str(tmp_path), "prompts": str(prompts), "output_dir": str(tmp_path / "out")}
    config_io.validate(config_io.load(PPOConfig(), None, good), require=("model.name_or_path", "prompts", "output_dir"))
    for bad, message in (({"minibatch_size": 24}, "must divide rollout_batch_size"),
                         ({"lam": 1.5}, "config key 'lam' must be <= 1, got 1.5"),
                         ({"kl_target": 0}, "'kl_target' must be > 0, got 0"), ({"ppo_epochs": 0}, "'ppo_epochs'"),
                         ({"prompts": str(tmp_path / "none.txt")}, "file not found")):
        with pytest.raises(ConfigError, match=message):
            config_io.validate(config_io.load(PPOConfig(), None, good, bad))
    with pytest.raises(ConfigError, match="unknown config key"):
        config_io.load(PPOConfig(), None, good, {"ppo_epoch": 2})
