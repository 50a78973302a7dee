"""The `kl` loss term: the chunked token KL against an independent full-vocabulary computation, in every layout.

Independent computation: both models' full forward over the plain padded rows, log_softmax over the whole
vocabulary, `F.kl_div` per position, masked to response tokens, averaged per token over each example's responses.
"""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from dpokit.data.collate import collate
from dpokit.data.packing import pack
from dpokit.data.tokenize import TokenizedExample
from dpokit.lm.logprobs import head_logits, kl_sequence_logps, response_hidden, sequence_logps
from dpokit.lm.reference import AdapterOff, FrozenModel
from dpokit.lm.token_kl import ReferenceStates
from dpokit.losses import LossInputs, LossParams, parse_objective, token_kl_loss

pytestmark = pytest.mark.usefixtures("one_thread")

EOS, PAD, VOCAB = 0, 1, 123
ODD_PAIRS = [(5, (1, 40)), (17, (23, 2)), (1, (9, 9))]  # responses of very different lengths, 1-token prompt/response
RANKED = [(4, (3, 11, 1)), (13, (2, 2, 7))]


def make_examples(lengths, seed=0):
    """lengths: [(prompt_len, (resp_len, ...)), ...]; random ids, each response ends with eos."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return tuple(torch.randint(2, VOCAB, (n,), generator=g).tolist())

    return [TokenizedExample(i, ids(p), tuple(ids(r - 1) + (EOS,) for r in resp))
            for i, (p, resp) in enumerate(lengths)]


def llama(seed: int, attn: str = "sdpa") -> LlamaForCausalLM:
    """A random Llama with odd sizes: H = 36, V = 123."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=36, intermediate_size=52, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=3, eos_token_id=EOS, pad_token_id=PAD,
                         bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.config._attn_implementation = attn
    return model.train()


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def models(request):
    """(policy, reference): different weights, so the KL is far from 0; the reference still requires grad, so a
    gradient leaking into it would show."""
    return llama(3, request.param), llama(4, request.param)


def full_vocabulary_kl(policy, reference, examples):
    """(B,) per-token KL of each example over all its responses, (B, K) log πref sums: plain forward, full V."""
    batch = collate(examples, PAD)
    logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    with torch.no_grad():
        ref_logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    logp, logq = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    per_position = F.kl_div(logq, logp, reduction="none", log_target=True).sum(-1)  # Σ_v p (log p − log q)
    mask = batch.loss_mask[:, 1:]
    b, k = len(examples), batch.num_responses
    kl = (per_position * mask).sum(-1).view(b, k).sum(-1) / mask.sum(-1).view(b, k).sum(-1)
    targets = batch.input_ids[:, 1:, None]
    ref_logps = (logq.gather(-1, targets).squeeze(-1) * mask).sum(-1).view(b, k)
    return kl, ref_logps


def reference_states(reference, batch) -> ReferenceStates:
    """The reference's hidden states and head, built here from the public helpers (no FrozenModel: its weights
    would be frozen, and this test wants to see that no gradient reaches them anyway)."""
    with torch.no_grad():
        hidden, _ = response_hidden(reference, batch)
    return ReferenceStates(hidden, functools.partial(head_logits, reference))


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def layouts():
    yield pytest.param(None, None, 0, id="plain-chunk=0")
    yield pytest.param(None, None, 7, id="plain-chunk=7")
    for shared, packing, chunk in itertools.product((True, False), (True, False), (0, 7)):
        yield pytest.param(shared, packing, chunk, id=f"shared={shared}-packing={packing}-chunk={chunk}")


@pytest.mark.parametrize(("shared", "packing", "chunk"), list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_kl_term_equals_full_vocabulary_kl_in_value_and_gradient(models, shapes, shared, packing, chunk):
    policy, reference = models
    examples = make_examples(shapes)
    policy.zero_grad()
    expected, expected_ref = full_vocabulary_kl(policy, reference, examples)
    expected.mean().backward()
    want = grads(policy)

    plain = shared is None
    batch = collate(examples, PAD) if plain else pack(examples, PAD, shared_prompt=shared, packing=packing,
                                                      row_length=50)
    policy.zero_grad()
    reference.zero_grad()
    got = kl_sequence_logps(policy, batch, reference_states(reference, batch), chunk)
    inputs = LossInputs(got.logps, got.num_tokens, got.reference_logps, kl=got.kl)
    losses = parse_objective("kl")(inputs, LossParams()).losses
    losses.mean().backward()

    torch.testing.assert_close(losses.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(policy), want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in reference.parameters())  # gradients reach the policy only
    torch.testing.assert_close(got.reference_logps, expected_ref, atol=1e-4, rtol=1e-5)
    with torch.no_grad():  # and the policy's own log-probs are those of the path without a reference
        torch.testing.assert_close(got.logps, sequence_logps(policy, batch, chunk).logps, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_kl_is_zero_with_zero_gradient_when_policy_is_reference(packed):
    policy = llama(5)
    examples = make_examples(ODD_PAIRS, seed=1)
    batch = pack(examples, PAD) if packed else collate(examples, PAD)
    reference = FrozenModel(copy.deepcopy(policy))
    got = kl_sequence_logps(policy, batch, reference.states(batch), chunk_size=5)
    token_kl_loss(got.kl, got.num_tokens).sum().backward()
    torch.testing.assert_close(got.kl, torch.zeros_like(got.kl), atol=1e-6, rtol=0)
    assert max(p.grad.abs().max().item() for p in policy.parameters()) < 1e-6
    torch.testing.assert_close(got.reference_logps, got.logps.detach(), atol=1e-5, rtol=0)


def test_adapter_off_gives_the_frozen_copys_kl_and_zero_before_training():
    """LoRA on every linear layer *and the LM head*: with the adapter freshly made (B = 0) the KL is 0; with the
    adapter changed, the adapter-off reference gives the KL a frozen copy of the base weights gives; both give it
    again through a kept whole copy of their head (`keep_head`, what FSDP / ZeRO-3 runs use)."""
    from peft import LoraConfig, get_peft_model

    base = llama(6)
    frozen = FrozenModel(copy.deepcopy(base))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj", "lm_head"])
    policy = get_peft_model(base, config)
    examples = make_examples(ODD_PAIRS, seed=2)
    batch = pack(examples, PAD)
    adapter_off = AdapterOff(policy)
    fresh = kl_sequence_logps(policy, batch, adapter_off.states(batch), chunk_size=4)
    torch.testing.assert_close(fresh.kl, torch.zeros_like(fresh.kl), atol=1e-6, rtol=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    trained = kl_sequence_logps(policy, batch, adapter_off.states(batch), chunk_size=4)
    copied = kl_sequence_logps(policy, batch, frozen.states(batch), chunk_size=4)
    assert trained.kl.min() > 1e-3
    torch.testing.assert_close(trained.kl, copied.kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained.reference_logps, copied.reference_logps, atol=1e-5, rtol=1e-5)
    # what a sharded run uses: a whole copy of the head kept before sharding (of the base layer, adapter off)
    adapter_off.keep_head()
    frozen.keep_head()
    kept = kl_sequence_logps(policy, batch, adapter_off.states(batch), chunk_size=4)
    torch.testing.assert_close(kept.kl, trained.kl, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kept.reference_logps, trained.reference_logps, atol=1e-6, rtol=1e-6)
    kept_copy = kl_sequence_logps(policy, batch, frozen.states(batch), chunk_size=4)
    torch.testing.assert_close(kept_copy.kl, copied.kl, atol=1e-6, rtol=1e-6)


class RowCounter(torch.nn.Module):
    """An LM head that records how many rows it is called with (the head stays the model's own Linear)."""

    def __init__(self, head: torch.nn.Linear):
        super().__init__()
        self.head, self.rows = head, []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return self.head(hidden)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_neither_head_sees_more_than_a_chunk_of_tokens(packed):
    """No (B·K, T, V) logits for either model: each head runs on at most `chunk_size` rows, forward and backward."""
    policy, reference = llama(7), llama(8)
    policy.lm_head, reference.lm_head = RowCounter(policy.lm_head), RowCounter(reference.lm_head)
    examples = make_examples(ODD_PAIRS, seed=3)
    batch = pack(examples, PAD) if packed else collate(examples, PAD)
    got = kl_sequence_logps(policy, batch, FrozenModel(reference).states(batch), chunk_size=6)
    token_kl_loss(got.kl, got.num_tokens).sum().backward()
    tokens = int(got.num_tokens.sum())
    assert max(policy.lm_head.rows) == max(reference.lm_head.rows) == 6
    assert sum(policy.lm_head.rows) == 2 * tokens  # forward, then recomputed in backward (checkpointed chunks)
    assert sum(reference.lm_head.rows) == 2 * tokens


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_the_trainer_adds_the_kl_term_and_logs_its_value(packed):
    """train_step and evaluate with "sigmoid + 0.5*kl": at the start πθ = πref, so kl/token = 0 and the loss is DPO's
    log 2; after a step, kl/token equals the full-vocabulary KL and the loss is DPO's plus 0.5·kl/token."""
    from dpokit.trainer.step import Trainee, evaluate, train_step

    policy = llama(9)
    reference = FrozenModel(copy.deepcopy(policy))
    examples = make_examples(ODD_PAIRS, seed=4)
    batch = pack(examples, PAD) if packed else collate(examples, PAD)
    trainee = Trainee(policy, reference, parse_objective("sigmoid + 0.5*kl"), LossParams(beta=0.1), chunk_size=8)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    first = train_step(trainee, [batch], optimizer, scheduler, max_grad_norm=None)
    assert first["kl/token"] == pytest.approx(0.0, abs=1e-6) and first["loss"] == pytest.approx(0.693147, abs=1e-5)

    after = evaluate(trainee, [batch])
    dpo = evaluate(Trainee(policy, reference, parse_objective("sigmoid"), LossParams(beta=0.1)), [batch])
    with torch.no_grad():
        expected, _ = full_vocabulary_kl(policy.eval(), reference.model, examples)
    assert after["kl/token"] == pytest.approx(expected.mean().item(), rel=1e-4) and after["kl/token"] > 1e-3
    assert after["loss"] == pytest.approx(dpo["loss"] + 0.5 * after["kl/token"], rel=1e-5)
    assert "kl/token" not in dpo
