"""The reward model's pieces: packed rewards equal plain ones (forward and gradients), the plain reading equals
transformers' own forward, the loss is Bradley–Terry, the metrics' arithmetic, and the config's refusals."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from dpokit.core import settings as config_io
from dpokit.core.errors import ConfigError
from dpokit.data.batching import Layout
from dpokit.data.collate import collate
from dpokit.data.packing import pack
from dpokit.data.tokenize import TokenizedExample
from dpokit.losses import LossInputs, LossOutput, objective_from_config
from dpokit.losses.listwise import plackett_luce_loss
from dpokit.rewards.reward_model import last_token_positions, response_lengths, rewards
from dpokit.rlhf.reward_config import RewardModelConfig
from dpokit.rlhf.reward_train import RewardEngine, RewardMetrics
from dpokit.trainer.assembly import check_layout

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

EOS, PAD = 0, 1
# a 1-token response (only its eos), responses of very different lengths, a one-token prompt; and ranked triples
ODD_PAIRS = [(5, (1, 40)), (17, (23, 2)), (1, (9, 9))]
RANKED = [(4, (3, 11, 1)), (13, (2, 2, 7))]


def make_examples(lengths, seed=0, vocab=123):
    """lengths: [(prompt_len, (resp_len, ...)), ...]; random ids, each response ends with eos."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return tuple(torch.randint(2, vocab, (n,), generator=g).tolist())

    return [TokenizedExample(i, ids(p), tuple(ids(r - 1) + (EOS,) for r in resp))
            for i, (p, resp) in enumerate(lengths)]


def reward_llama(attn: str = "sdpa", seed: int = 3) -> LlamaForSequenceClassification:
    """A tiny random Llama reward model (H = 36, 3 heads), its head scaled up so rewards are of order 1."""
    config = LlamaConfig(vocab_size=123, hidden_size=36, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=3, num_labels=1, pad_token_id=PAD)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(30)
    return model.train()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize(("shared", "packing"), list(itertools.product((True, False), (True, False))))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_packed_rewards_loss_and_grads_match_plain(shapes, shared, packing, attn):
    model = reward_llama(attn)
    examples = make_examples(shapes)
    results = []
    for batch in (collate(examples, PAD), pack(examples, PAD, shared_prompt=shared, packing=packing, row_length=50)):
        model.zero_grad()
        r = rewards(model, batch)
        loss = plackett_luce_loss(r, beta=1.0).mean()
        loss.backward()
        results.append((r.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (plain, plain_loss, plain_grads), (fast, fast_loss, fast_grads) = results
    assert plain.shape == (len(shapes), len(shapes[0][1])) and plain.std() > 0.1  # rewards of order 1, not ~0
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_plain_rewards_are_transformers_own_forward_and_read_each_eos():
    """transformers reads the rightmost non-pad token; dpokit the last real token of each response: the same here.
    In the packed rows, the positions read hold each response's eos (a 1-token response's included)."""
    model = reward_llama().eval()
    examples = make_examples(ODD_PAIRS)
    batch = collate(examples, PAD)
    with torch.no_grad():
        ours = rewards(model, batch)
        theirs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ours.flatten(), theirs.flatten(), atol=1e-6, rtol=1e-6)

    packed = pack(examples, PAD, shared_prompt=True, packing=True, row_length=50)
    rows, cols = last_token_positions(packed)
    assert packed.input_ids[rows, cols].tolist() == [EOS] * 6
    lengths = [[len(r) for r in ex.response_ids] for ex in examples]
    assert response_lengths(packed).tolist() == lengths == response_lengths(batch).tolist()


def _classifiers():
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        GPTNeoXConfig,
        GPTNeoXForSequenceClassification,
        Qwen2Config,
        Qwen2ForSequenceClassification,
    )

    small = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128,
                 num_labels=1, pad_token_id=PAD)
    return {
        "gpt2": lambda: GPT2ForSequenceClassification(GPT2Config(vocab_size=128, n_layer=2, n_head=4, n_embd=64,
                                                                 num_labels=1, pad_token_id=PAD)),
        "qwen2": lambda: Qwen2ForSequenceClassification(Qwen2Config(**small, num_key_value_heads=2)),
        "gpt_neox": lambda: GPTNeoXForSequenceClassification(GPTNeoXConfig(**small)),
    }


@pytest.mark.parametrize("arch", sorted(_classifiers()))
def test_packed_rewards_hold_across_architectures(arch):
    """Learned positions (GPT-2, backbone `transformer`), GQA, parallel blocks (GPT-NeoX): the start-up check keeps
    the fast layout because packed rewards equal plain ones."""
    torch.manual_seed(0)
    model = _classifiers()[arch]().eval()
    examples = make_examples([(7, (6, 13)), (3, (10, 3))], vocab=100)
    fast = Layout(packing=True, shared_prompt=True, row_length=64)
    assert check_layout(model, examples, fast, PAD, False, 0, outputs=rewards) == (fast, None)


def test_the_objective_is_bradley_terry_and_the_metrics_add_up():
    """Pairs r = [[2, 0], [1, 3]]: losses −log σ(2) and −log σ(−2); accuracy 1/2; margin (2 + (−2)) / 2 = 0;
    rewards 2, 0, 1, 3: mean 1.5, std sqrt(((.5)² + (1.5)² + (.5)² + (1.5)²) / 4) = sqrt(1.25)."""
    objective, params = objective_from_config(RewardModelConfig().as_train_config().loss)
    assert not objective.needs_reference and objective.ranked and params.beta == 1.0
    r = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    out = objective(LossInputs(policy_logps=r, num_tokens=torch.ones(2, 2)), params)
    expected = -torch.nn.functional.logsigmoid(torch.tensor([2.0, -2.0]))
    torch.testing.assert_close(out.losses, expected)

    metrics = RewardMetrics()
    metrics.add(out, logps=None)
    metrics.reduce(lambda values: values)  # one process: totals are its own sums
    got = metrics.means()
    assert got == pytest.approx({"loss": expected.mean().item(), "rewards/chosen": 1.5, "rewards/rejected": 1.5,
                                 "rewards/accuracies": 0.5, "rewards/margins": 0.0, "rewards/mean": 1.5,
                                 "rewards/std": math.sqrt(1.25)})


def test_engine_output_feeds_the_loop_objective():
    """`RewardEngine` puts the rewards where the loop's objective reads its scores, with gradients."""
    model = reward_llama()
    batch = pack(make_examples(RANKED), PAD)
    out = RewardEngine(model)(batch)
    torch.testing.assert_close(out.logps, rewards(model, batch))
    assert out.logps.requires_grad and out.token_logps.shape == (2, 3, 0)
    metrics = RewardMetrics()
    metrics.add(LossOutput(plackett_luce_loss(out.logps, 1.0), out.logps), out)
    assert metrics.means()["rewards/accuracies"] in (0.0, 0.5, 1.0)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("data.format", "unpaired", "learns from preferences"),
    ("train.lr", 0.0, "'train.lr' must be > 0"),  # train's own checks apply
])
def test_config_refusals(tmp_path, key, value, message):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    cfg = config_io.load(RewardModelConfig(), None, {"data.path": str(data), "train.output_dir": str(tmp_path),
                                                     key: value})
    with pytest.raises(ConfigError, match=message):
        config_io.validate(cfg)
    assert "loss." not in config_io.describe_keys(RewardModelConfig)  # no loss to set
