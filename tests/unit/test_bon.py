"""Best-of-N: the analytic KL against the continuous integral, the exact discrete distribution against enumeration,
and the sampler itself against that distribution on a tiny Llama whose next-token probabilities are known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dpokit.core.errors import ConfigError
from dpokit.core.sections import SamplingSettings
from dpokit.data.tokenize import encode_prompts
from dpokit.rlhf.bon import (
    BestOfN,
    analytic_kl,
    best_of_n,
    best_of_n_probs,
    chosen_indices,
    evaluated_points,
    exact_kl,
    frontier_points,
    select_best,
    summary_text,
)
from dpokit.rlhf.bon_config import BonConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

VOCAB = 60


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_analytic_kl_is_the_continuous_integral(n):
    """With u = F(y) ~ U(0, 1), best-of-n has density n·u^(n−1): KL = ∫ n u^(n−1) log(n u^(n−1)) du, integrated here
    by the midpoint rule on 10^6 cells (no use of the closed form)."""
    u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000
    log_density = math.log(n) + (n - 1) * u.log()
    integral = (log_density.exp() * log_density).mean().item()
    assert analytic_kl(n) == pytest.approx(integral, abs=1e-6)
    assert analytic_kl(n) == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-15)


def test_analytic_kl_refuses_n_below_one():
    with pytest.raises(ValueError, match="n must be >= 1"):
        analytic_kl(0)


def test_best_of_n_probs_equals_enumeration_of_every_draw():
    """All 5^3 draws of 3 samples, each reduced by `select_best`: the chosen outcome's probability, ties included
    (outcomes 0 and 2 share a reward, so which of them is chosen depends on sample order)."""
    probs = torch.tensor([0.1, 0.25, 0.3, 0.15, 0.2], dtype=torch.float64)
    rewards = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.5], dtype=torch.float64)
    expected = torch.zeros(5, dtype=torch.float64)
    for draw in itertools.product(range(5), repeat=3):
        chosen = draw[select_best([rewards[y].item() for y in draw])]
        expected[chosen] += math.prod(probs[y].item() for y in draw)
    assert torch.allclose(best_of_n_probs(probs, rewards, 3), expected, atol=1e-15, rtol=0)
    assert best_of_n_probs(probs, rewards, 3).sum().item() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_exact_kl_reaches_the_formula_when_no_outcome_has_much_mass(n):
    """10^5 equally likely outcomes, distinct rewards in shuffled order: the discrete KL is within 1e-7 of
    log n − (n−1)/n (the gap is O(n/M)). With 60 outcomes it is measurably below: the formula is an upper bound."""
    many = 100_000
    rewards = torch.randperm(many, generator=torch.Generator().manual_seed(n)).double()
    uniform = torch.full((many,), 1 / many, dtype=torch.float64)
    assert exact_kl(uniform, rewards, n) == pytest.approx(analytic_kl(n), abs=1e-7)
    assert exact_kl(uniform, rewards, n) <= analytic_kl(n)
    few = torch.full((60,), 1 / 60, dtype=torch.float64)
    assert analytic_kl(n) - exact_kl(few, torch.arange(60.0), n) > 1e-4


def test_the_formula_bounds_every_discrete_kl_and_ties_lower_it():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        weights = torch.rand(20, generator=gen, dtype=torch.float64) ** 4  # uneven: largest share often > 0.2
        probs = weights / weights.sum()
        rewards = torch.rand(20, generator=gen, dtype=torch.float64)
        tied = (rewards * 4).floor()  # 4 reward levels: the same order, coarser
        for n in (2, 8, 32):
            assert exact_kl(probs, rewards, n) <= analytic_kl(n) + 1e-12
            assert exact_kl(probs, tied, n) <= exact_kl(probs, rewards, n) + 1e-12
    assert exact_kl(probs, torch.zeros(20), 8) == pytest.approx(0.0, abs=1e-15)  # one level: the sample is πref's


def test_ties_are_broken_by_sample_order():
    assert select_best([1.0, 3.0, 3.0, 2.0]) == 1
    assert select_best([0.5, 0.5, 0.5]) == 0
    assert select_best([-2.0, -1.0]) == 1


def test_frontier_points_take_the_first_n_samples_of_one_draw():
    result = BestOfN(["a", "b"], [["x"] * 4] * 2, [[0.0, 5.0, 5.0, 9.0], [3.0, 1.0, 4.0, 1.0]], [3, 2], None)
    points = frontier_points(result, [1, 2, 3, 4])
    assert [p.reward for p in points] == [1.5, 4.0, 4.5, 6.5]
    assert [p.kl for p in points] == [analytic_kl(n) for n in (1, 2, 3, 4)]
    assert points[0].reward_se == pytest.approx(1.5)  # chosen (0, 3): std sqrt(4.5), over sqrt(2) prompts
    with pytest.raises(ConfigError, match="best-of-5 needs"):
        frontier_points(result, [5])


def test_evaluated_points_select_by_one_reward_and_score_by_another():
    """A proxy that disagrees with the truth: best-of-N by the proxy, valued by the truth of the chosen samples."""
    proxy = [[0.0, 5.0, 5.0, 9.0], [3.0, 1.0, 4.0, 1.0]]
    truth = [[1.0, -1.0, 2.0, 0.5], [0.0, 2.0, -3.0, 4.0]]
    result = BestOfN(["a", "b"], [["x"] * 4] * 2, proxy, [3, 2], None)
    assert [chosen_indices(proxy, n) for n in (1, 2, 3, 4)] == [[0, 0], [1, 0], [1, 2], [3, 2]]
    points = evaluated_points(result, [1, 2, 3, 4], truth)
    # chosen truths: N=1 (1.0, 0.0); N=2 (-1.0, 0.0); N=3 (-1.0, -3.0); N=4 (0.5, -3.0)
    assert [p.reward for p in points] == [0.5, -0.5, -2.0, -1.25]
    assert [p.kl for p in points] == [analytic_kl(n) for n in (1, 2, 3, 4)]
    assert points[2].reward_se == pytest.approx(1.0)  # std of (-1, -3) is sqrt(2), over sqrt(2) prompts
    assert evaluated_points(result, [2], proxy) == frontier_points(result, [2])  # scored by itself: the old points
    with pytest.raises(ConfigError, match="best-of-5 needs"):
        evaluated_points(result, [5], truth)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One word per id ("t1" ... "t59"), eos = pad = id 0: every token decodes to its own text."""
    vocab = {"<eos>": 0, **{f"t{i}": i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


@pytest.fixture(scope="module")
def known_model():
    """A random 1-layer Llama over 60 tokens, its head scaled so the next-token distribution is far from uniform
    (largest probability ~0.07, smallest ~0.002)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, eos_token_id=0,
                                         pad_token_id=0, bos_token_id=None)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12)
    return model


def test_best_of_n_draws_the_exact_best_of_n_distribution_of_a_tiny_llama(known_model):
    """One-token completions: πref is the model's softmax at the prompt, p. Each token has its own fixed random
    reward (eos's is that of the empty completion). 6000 prompts x best-of-4: the chosen tokens' frequencies match
    p_4 = F^4 − F(−)^4 within sampling noise, and are far from p itself (choosing any sample but the best fails)."""
    tokenizer, n, draws, prompt = word_tokenizer(), 4, 6000, "t1 t2 t3"
    with torch.no_grad():
        p = known_model(torch.tensor(encode_prompts(tokenizer, [prompt]))).logits[0, -1].double().softmax(-1)
    token_reward = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(1)).double()
    by_text = {("" if i == 0 else tokenizer.decode([i])): token_reward[i].item() for i in range(VOCAB)}
    assert len(by_text) == VOCAB  # every token decodes to its own completion text

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [by_text[c] for c in completions]

    result = best_of_n(known_model, tokenizer, [prompt] * draws, reward, n,
                       SamplingSettings(max_new_tokens=1, batch_size=8192), seed=0)
    drawn = [[ids[0] for ids in result.samples.completion_ids[i * n:(i + 1) * n]] for i in range(draws)]
    assert result.rewards == [[token_reward[t].item() for t in row] for row in drawn]
    assert result.best == [max(range(n), key=lambda j, r=row: token_reward[r[j]].item()) for row in drawn]
    chosen = torch.tensor([row[b] for row, b in zip(drawn, result.best, strict=True)])
    frequency = torch.bincount(chosen, minlength=VOCAB).double() / draws
    p_n = best_of_n_probs(p, token_reward, n)
    noise = 0.5 * (2 * p_n * (1 - p_n) / (math.pi * draws)).sqrt().sum().item()  # E[TV] from sampling alone, ~0.027
    assert 0.5 * (frequency - p_n).abs().sum().item() < 1.5 * noise
    assert 0.5 * (frequency - p).abs().sum().item() > 0.3
    kl = exact_kl(p, token_reward, n)
    assert analytic_kl(n) - 0.005 < kl <= analytic_kl(n)  # 0.6352 vs 0.6363: the model's largest p is ~0.07
    log_ratio = (p_n / p).log()[chosen]  # E_{p_N}[log p_N / p] = KL, estimated from the draws themselves
    assert abs(log_ratio.mean().item() - kl) < 4 * log_ratio.std().item() / math.sqrt(draws)


def test_rows_and_summary_agree_with_the_samples(known_model):
    tokenizer = word_tokenizer()

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]  # ties everywhere: "t1".."t9" all score 2

    result = best_of_n(known_model, tokenizer, ["t1", "t4 t5"], reward, 8, SamplingSettings(max_new_tokens=3),
                       seed=2)
    for row, texts, scores in zip(result.rows(), result.completions, result.rewards, strict=True):
        assert [s["completion"] for s in row["samples"]] == texts
        assert row["best"] == scores.index(max(scores))  # the first of the best
        assert (row["completion"], row["reward"]) == (texts[row["best"]], max(scores))
    assert result.completions == [result.samples.completions[:8], result.samples.completions[8:]]
    summary = result.summary()
    assert summary["best_reward"] == sum(max(s) for s in result.rewards) / 2
    assert summary["mean_reward"] == sum(map(sum, result.rewards)) / 16
    assert summary["analytic_kl"] == analytic_kl(8) and summary["n"] == 8 and result.reward_name == "reward"
    assert "‖ πref) = log N − (N−1)/N = 1.2044 nats" in summary_text(result)
    tempered = best_of_n(known_model, tokenizer, ["t1"], reward, 2, SamplingSettings(1, temperature=0.5), seed=2)
    assert "‖ the tempered sampler, not πref)" in summary_text(tempered)  # the formula's KL is not to πref there


@pytest.mark.parametrize(("values", "message"), [
    ({"n": 0}, "config key 'n' must be > 0, got 0"),
    ({"temperature": 0.0}, "config key 'temperature' must be > 0"),
    ({"max_new_tokens": 0}, "config key 'max_new_tokens' must be > 0, got 0"),
])
def test_config_ranges_are_checked(values, message):
    from dpokit.core import settings as config_io

    with pytest.raises(ConfigError, match=message):
        config_io.validate(config_io.load(BonConfig(model="m", prompts="p.txt"), None, values))


def test_docstring_examples():
    import doctest

    import dpokit.rlhf.bon

    result = doctest.testmod(dpokit.rlhf.bon, verbose=False)
    assert result.attempted >= 2 and result.failed == 0
