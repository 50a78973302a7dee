"""Every fast path against the plain padded path: same log-probs, loss and gradients (fp32), at odd shapes."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import pytest
import torch

from dpokit.data.batching import Layout
from dpokit.data.collate import collate
from dpokit.data.packing import _bin, _units, pack
from dpokit.data.tokenize import TokenizedExample
from dpokit.lm.logprobs import SelectedLogProb, chunked_token_logps, sequence_logps
from dpokit.losses import LossInputs, LossParams, parse_objective
from dpokit.models.tiny import tiny_llama

EOS, PAD = 0, 1


def make_examples(lengths, seed=0, vocab=123):
    """lengths: [(prompt_len, (resp_len, ...)), ...]; random ids, each response ends with eos."""
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return tuple(torch.randint(2, vocab, (n,), generator=g).tolist())

    return [TokenizedExample(i, ids(p), tuple(ids(r - 1) + (EOS,) for r in resp))
            for i, (p, resp) in enumerate(lengths)]


# a pair whose responses differ a lot in length, a one-token prompt, a 1-token response
ODD_PAIRS = [(5, (1, 40)), (17, (23, 2)), (1, (9, 9))]
RANKED = [(4, (3, 11, 1)), (13, (2, 2, 7))]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tokenizer):
    m = tiny_llama(tokenizer, hidden_size=36, num_layers=2, num_heads=3, seed=3)
    m.config._attn_implementation = request.param
    return m.train()


def layouts():
    for shared, packing, chunk in itertools.product((True, False), (True, False), (0, 7)):
        yield pytest.param(shared, packing, chunk, id=f"shared={shared}-packing={packing}-chunk={chunk}")


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(("shared", "packing", "chunk"), list(layouts()))
@pytest.mark.parametrize("shapes", [ODD_PAIRS, RANKED], ids=["pairs", "ranked3"])
def test_packed_logps_loss_and_grads_match_plain(model, shapes, shared, packing, chunk):
    examples = make_examples(shapes)
    reference = copy.deepcopy(model).eval()
    objective = parse_objective("plackett_luce" if len(shapes[0][1]) > 2 else "sigmoid + 0.3*sft")
    results = []
    for batch in (collate(examples, PAD), pack(examples, PAD, shared_prompt=shared, packing=packing, row_length=50)):
        model.zero_grad()
        got = sequence_logps(model, batch, chunk_size=chunk)
        with torch.no_grad():
            ref = sequence_logps(reference, batch, chunk_size=chunk).logps + 0.5  # a reference ≠ policy
        out = objective(LossInputs(got.logps, got.num_tokens, ref), LossParams(beta=0.7))
        out.losses.mean().backward()
        results.append((got, out.losses.detach(), grads(model)))
    (plain, plain_loss, plain_grads), (fast, fast_loss, fast_grads) = results
    torch.testing.assert_close(fast.logps, plain.logps, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.num_tokens, plain.num_tokens)
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for b, k in itertools.product(range(len(examples)), range(len(shapes[0][1]))):  # token by token
        torch.testing.assert_close(fast.token_logps[b, k][fast.token_mask[b, k]],
                                   plain.token_logps[b, k][plain.token_mask[b, k]], atol=1e-5, rtol=1e-5)


def test_unpaired_packed_layout_matches_plain(model):
    examples = [TokenizedExample(e.index, e.prompt_ids, e.response_ids[:1], label=e.index % 2 == 0)
                for e in make_examples(ODD_PAIRS, seed=4)]
    plain = sequence_logps(model, collate(examples, PAD, unpaired=True))
    fast = sequence_logps(model, pack(examples, PAD, unpaired=True), chunk_size=5)
    torch.testing.assert_close(fast.logps, plain.logps, atol=1e-4, rtol=1e-5)


def test_packing_puts_several_units_in_a_row_and_counts_real_tokens():
    examples = make_examples([(3, (2, 2)), (3, (2, 2)), (10, (30, 4))])
    batch = pack(examples, PAD, shared_prompt=True, packing=True)
    assert batch.input_ids.shape[0] == 2  # two short units share a row beside the long one's
    assert batch.num_real_tokens == 7 + 7 + 44
    plain = collate(examples, PAD)
    assert int(plain.attention_mask.sum()) == 2 * (5 + 5) + 40 + 14  # the plain layout repeats every prompt



@pytest.mark.parametrize("seed", range(6))
def test_packing_takes_the_capacity_with_the_fewest_cells(seed):
    """`pack` tries the capacities from row_length down; checked against first-fit decreasing at *every* capacity:
    no capacity gives fewer rows × width, the rows hold every unit once and none is wider than row_length."""
    g = torch.Generator().manual_seed(seed)
    lengths = [(int(torch.randint(1, 30, (), generator=g)), tuple(int(x) for x in torch.randint(1, 40, (2,),
                                                                                                 generator=g)))
               for _ in range(9)]
    examples = make_examples(lengths, seed=seed)
    units = _units(examples, [ex.response_ids for ex in examples], shared_prompt=True)
    longest, row_length = max(map(len, units)), 200
    packed = pack(examples, PAD, shared_prompt=True, packing=True, row_length=row_length)
    rows, width = packed.input_ids.shape
    every = [_bin(units, c) for c in range(longest, row_length + 1)]
    fewest = min(len(r) * max(sum(map(len, row)) for row in r) for r in every)
    assert rows * width == fewest
    assert width <= row_length and packed.num_real_tokens == sum(map(len, units))
    at_row_length = every[-1]  # the rule before: capacity = row_length
    assert rows * width <= len(at_row_length) * max(sum(map(len, row)) for row in at_row_length)

@pytest.mark.parametrize(("chunk", "head_calls"), [(10, 5 + 4), (47, 1), (0, 1), (46, 2 + 1)])
def test_chunked_token_logps_matches_full_logits_in_value_and_gradient(chunk, head_calls):
    """Values and gradients (hidden and head) equal the full-vocabulary computation; every chunk but the last is
    recomputed in backward (47 tokens in chunks of 10: 5 forwards + 4 recomputes), the last keeps its logits."""
    torch.manual_seed(0)
    hidden = torch.randn(47, 31, requires_grad=True)
    head = torch.nn.Linear(31, 123, bias=True)
    targets = torch.randint(0, 123, (47,))
    full = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    g_full = torch.autograd.grad(full.sum(), (hidden, head.weight))
    calls = []
    hook = head.register_forward_hook(lambda *_: calls.append(1))
    chunked = chunked_token_logps(hidden, head, targets, chunk_size=chunk)
    g_chunk = torch.autograd.grad(chunked.sum(), (hidden, head.weight))
    hook.remove()
    torch.testing.assert_close(chunked, full)
    for a, b in zip(g_chunk, g_full, strict=True):
        torch.testing.assert_close(a, b)
    assert len(calls) == head_calls


def test_selected_log_prob_backward_is_autograds():
    """The hand-written backward equals autograd's for `gather − logsumexp` under uneven upstream gradients (zeros,
    negatives: masked and weighted tokens), at odd shapes with repeated targets; and passes gradcheck in float64."""
    torch.manual_seed(0)
    logits = torch.randn(13, 37, requires_grad=True) * 3
    targets = torch.tensor([0, 36, 5, 5, 5, 12, 0, 36, 1, 2, 3, 4, 5])
    upstream = torch.randn(13) * torch.tensor([1.0, 0.0] * 6 + [1.0])
    picked, lse = SelectedLogProb.apply(logits, targets)
    plain = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, -1)
    torch.testing.assert_close(picked, plain)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1))
    assert not lse.requires_grad
    ours, = torch.autograd.grad(picked, logits, upstream)
    theirs, = torch.autograd.grad(plain, logits, upstream)
    torch.testing.assert_close(ours, theirs)
    x = torch.randn(5, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: SelectedLogProb.apply(t, torch.tensor([3, 0, 10, 3, 7]))[0], (x,))


def test_check_layout_falls_back_to_plain_when_the_fast_path_disagrees(tokenizer):
    """A head the fast path misreads (here: a softcap the Llama forward does not apply) is caught at start-up."""
    from dpokit.data.batching import Layout
    from dpokit.trainer.assembly import check_layout

    model = tiny_llama(tokenizer, hidden_size=36, num_layers=1, num_heads=3, seed=5)
    examples = make_examples(ODD_PAIRS)
    fast = Layout(packing=True, shared_prompt=True)
    assert check_layout(model, examples, fast, PAD, False, 16) == (fast, None)
    with torch.no_grad():
        model.lm_head.weight.mul_(100)  # confident logits, so a softcap of 0.5 really changes them
    model.config.final_logit_softcapping = 0.5
    layout, warning = check_layout(model, examples, fast, PAD, False, 16)
    assert layout.plain and "using plain padded batches" in warning


def _architectures():
    from transformers import (
        GemmaConfig,
        GemmaForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        PhiConfig,
        PhiForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    small = dict(vocab_size=128, num_hidden_layers=2, num_attention_heads=4, hidden_size=64, intermediate_size=128)
    return {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=128, n_layer=2, n_head=4, n_embd=64, bos_token_id=0,
                                                   eos_token_id=0)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**small, num_key_value_heads=2)),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**small, num_key_value_heads=2)),
        "gemma": lambda: GemmaForCausalLM(GemmaConfig(**small, num_key_value_heads=2, head_dim=16)),
        "phi": lambda: PhiForCausalLM(PhiConfig(**small)),
        "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**small)),
    }


@pytest.mark.parametrize("arch", sorted(_architectures()))
def test_fast_path_holds_across_architectures(arch):
    """Learned/rotary/partial-rotary positions, GQA, parallel blocks: packed log-probs equal plain ones."""
    from dpokit.data.batching import Layout
    from dpokit.trainer.assembly import check_layout

    torch.manual_seed(0)
    model = _architectures()[arch]().eval()
    examples = make_examples([(7, (6, 13)), (3, (10, 3))], vocab=100)
    fast = Layout(packing=True, shared_prompt=True, row_length=64)
    assert check_layout(model, examples, fast, PAD, False, 16) == (fast, None)


def test_check_layout_falls_back_when_the_fast_forward_raises(tokenizer, monkeypatch):
    import dpokit.trainer.assembly as pipeline
    from dpokit.data.packing import PackedBatch

    real = pipeline.sequence_logps

    def refuses_packed(model, batch, chunk_size=1024):
        if isinstance(batch, PackedBatch):
            raise ValueError("4D masks are not supported by this attention")
        return real(model, batch, chunk_size)

    monkeypatch.setattr(pipeline, "sequence_logps", refuses_packed)
    model = tiny_llama(tokenizer, hidden_size=36, num_layers=1, num_heads=3, seed=5)
    layout, warning = pipeline.check_layout(model, make_examples(ODD_PAIRS), Layout(True, True), PAD, False, 8)
    assert layout.plain and "ValueError: 4D masks are not supported" in warning


def full_vocab_sum_sq(model, batch) -> torch.Tensor:
    """(B, K) Σ over response tokens of log Σ_v π(v)², from the model's whole (N, T, V) logits: written out here."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        per_token = torch.logsumexp(2 * torch.log_softmax(logits, -1), -1) * batch.loss_mask[:, 1:]
    return per_token.sum(-1).view(batch.num_examples, batch.num_responses)


@pytest.mark.parametrize(("shared", "packing", "chunk"), list(layouts()))
def test_log_sum_sq_probs_and_wpo_loss_match_plain(model, shared, packing, chunk):
    """WPO (`use_weighting`): log Σ_v πθ(v)² per response in every layout equals a full-vocabulary computation, and
    the weighted loss and its gradients equal the plain path's; not asked, no path computes it."""
    examples = make_examples(ODD_PAIRS, seed=2)
    objective = replace(parse_objective("sigmoid + 0.3*sft"), use_weighting=True, wpo_clamp=False)
    plain_batch = collate(examples, PAD)
    expected = full_vocab_sum_sq(model, plain_batch)
    results = []
    for batch in (plain_batch, pack(examples, PAD, shared_prompt=shared, packing=packing, row_length=50)):
        model.zero_grad()
        assert sequence_logps(model, batch, chunk_size=chunk).log_sum_sq_probs is None
        got = sequence_logps(model, batch, chunk_size=chunk, sum_sq=True)
        torch.testing.assert_close(got.log_sum_sq_probs, expected, atol=1e-4, rtol=1e-5)
        assert not got.log_sum_sq_probs.requires_grad
        inputs = LossInputs(got.logps, got.num_tokens, got.logps.detach() + 0.5, log_sum_sq_probs=got.log_sum_sq_probs)
        out = objective(inputs, LossParams(beta=0.7))
        out.losses.mean().backward()
        results.append((out.losses.detach(), grads(model)))
    (plain_loss, plain_grads), (fast_loss, fast_grads) = results
    torch.testing.assert_close(fast_loss, plain_loss, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_log_sum_sq_probs_in_the_kl_path(model, packed):
    """With the `kl` term's reference states, the chunked KL loop gives log Σ_v πθ(v)² too (its own chunk loop)."""
    from dpokit.lm.logprobs import head_logits, response_hidden
    from dpokit.lm.token_kl import ReferenceStates

    examples = make_examples(ODD_PAIRS, seed=6)
    reference = copy.deepcopy(model).eval()
    plain_batch = collate(examples, PAD)
    batch = pack(examples, PAD, shared_prompt=True, packing=True, row_length=50) if packed else plain_batch
    with torch.no_grad():
        hidden, _ = response_hidden(reference, batch)
    states = ReferenceStates(hidden, lambda h: head_logits(reference, h))
    got = sequence_logps(model, batch, chunk_size=7, reference=states, sum_sq=True)
    torch.testing.assert_close(got.log_sum_sq_probs, full_vocab_sum_sq(model, plain_batch), atol=1e-4, rtol=1e-5)
    assert sequence_logps(model, batch, chunk_size=7, reference=states).log_sum_sq_probs is None
