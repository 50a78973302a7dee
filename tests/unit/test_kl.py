"""The sequence-KL estimator against exact computations on a vocabulary small enough to enumerate.

With vocabulary V = 6 and at most L = 3 new tokens, every possible completion y of a prompt can be listed
(sequences ending at the first eos, plus the eos-free ones of length L), and its probability computed by hand from
the models' logits:

    π(y|x) = Π_t softmax(policy(x, y_<t))[y_t]

The exact sequence KL is Σ_y π(y) log(π(y)/πref(y)). The estimator's value on one completion, Σ_t KL(π_t ‖ πref_t),
is not that number, but its π-weighted mean over all completions is (the tower rule); that identity is asserted to
1e-5, then a Monte Carlo mean over completions sampled by `sample_ids` is asserted to land within 4 standard errors.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpokit.core.sections import SamplingSettings
from dpokit.lm.sampling import sample_ids
from dpokit.lm.sequence_kl import sequence_kl, token_kl

VOCAB, EOS, PAD, MAX_NEW = 6, 0, 1, 3
PROMPTS = ([2, 3], [4])  # different lengths: sampling left-pads, the KL forward right-pads


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _llama(vocab: int, seed: int, scale: float = 1.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None, initializer_range=0.02 * scale)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def models() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """π and πref: different random weights, initialised large enough that their distributions differ clearly."""
    return _llama(VOCAB, seed=0, scale=40.0), _llama(VOCAB, seed=1, scale=40.0)


def all_completions() -> list[list[int]]:
    """Every completion of at most MAX_NEW tokens that stops at its first eos (or runs out of budget)."""
    out = []
    for length in range(1, MAX_NEW + 1):
        for body in itertools.product([t for t in range(VOCAB) if t != EOS], repeat=length - 1):
            out.append([*body, EOS])
            if length == MAX_NEW:
                out.extend([*body, last] for last in range(VOCAB) if last != EOS)
    return out


@torch.no_grad()
def logprob(model: LlamaForCausalLM, prompt: list[int], completion: list[int]) -> float:
    """log π(completion | prompt), one unpadded forward, by hand from the softmax."""
    ids = torch.tensor([prompt + completion])
    logp = model(ids).logits[0].double().log_softmax(-1)
    return sum(logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion))


def test_completions_are_a_distribution(models):
    policy, _ = models
    total = sum(math.exp(logprob(policy, list(PROMPTS[0]), y)) for y in all_completions())
    assert total == pytest.approx(1.0, abs=1e-6)


def test_token_kl_matches_the_definition():
    p_logits, q_logits = torch.randn(5, 7), torch.randn(5, 7)
    p, q = p_logits.softmax(-1), q_logits.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1)
    torch.testing.assert_close(token_kl(p_logits, q_logits), expected)
    assert (token_kl(p_logits, q_logits) >= 0).all()
    torch.testing.assert_close(token_kl(p_logits, p_logits), torch.zeros(5))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_estimator_mean_is_the_exact_sequence_kl(models, prompt):
    policy, reference = models
    completions = all_completions()
    estimates = sequence_kl(policy, reference, [list(prompt)] * len(completions), completions, batch_size=64)
    exact = weighted = 0.0
    for y, estimate in zip(completions, estimates.tolist(), strict=True):
        logp, logq = logprob(policy, list(prompt), y), logprob(reference, list(prompt), y)
        exact += math.exp(logp) * (logp - logq)
        weighted += math.exp(logp) * estimate
    assert exact > 0.1  # the two models really differ
    assert weighted == pytest.approx(exact, rel=1e-5, abs=1e-6)


def test_estimate_of_one_completion_is_the_sum_of_per_token_kls(models):
    policy, reference = models
    prompt, completion = [2, 3], [5, 4, EOS]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        p, q = policy(ids).logits[0].double().softmax(-1), reference(ids).logits[0].double().softmax(-1)
    by_hand = sum((p[t] * (p[t].log() - q[t].log())).sum().item() for t in range(1, 4))  # predicts 5, 4, eos
    got = sequence_kl(policy, reference, [prompt], [completion])
    assert got.item() == pytest.approx(by_hand, rel=1e-5)


def test_kl_of_a_model_with_itself_is_zero(models):
    policy, _ = models
    completions = all_completions()[:40]
    prompts = [list(PROMPTS[i % 2]) for i in range(len(completions))]
    assert sequence_kl(policy, policy, prompts, completions).abs().max().item() == 0.0
    twin = copy.deepcopy(policy)
    assert sequence_kl(policy, twin, prompts, completions).abs().max().item() < 1e-6


def test_sampled_mean_estimates_the_exact_kl(models):
    """Sampling (left-padded batch, KV cache, temperature 1) draws from π: the Monte Carlo mean agrees."""
    policy, reference = models
    n = 3000
    prompts = [list(PROMPTS[i % 2]) for i in range(n)]
    settings = SamplingSettings(max_new_tokens=MAX_NEW, batch_size=1000)
    completions = sample_ids(policy, prompts, settings, stop=EOS, pad_id=PAD, seed=0)
    assert all(1 <= len(y) <= MAX_NEW and EOS not in y[:-1] for y in completions)
    estimates = sequence_kl(policy, reference, prompts, completions, batch_size=500)
    for start in (0, 1):  # each prompt on its own
        values = estimates[start::2].double()
        exact = sum(math.exp(lp) * (lp - lq) for y in all_completions()
                    for lp, lq in [(logprob(policy, prompts[start], y), logprob(reference, prompts[start], y))])
        se = values.std().item() / math.sqrt(len(values))
        assert abs(values.mean().item() - exact) < 4 * se + 1e-3
