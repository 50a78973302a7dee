"""Log-probabilities of the response tokens under a model: the quantity every DPO-family loss is built from.

Two paths give the same numbers (tests check loss and gradients):
- plain (`Batch`): the model's full forward, logits for every position of every padded row.
- fast (`PackedBatch`): the backbone over packed rows, then the LM head only at the positions that predict response
  tokens, in chunks, each chunk's logits recomputed in backward instead of stored: peak memory for logits is
  (chunk, V) instead of (B·K, T, V).

With a reference's `ReferenceStates` (for the `kl` loss term), either layout goes the chunked way: the backbone, then
per chunk of response tokens the policy's and the reference's logits side by side, giving each token's log-prob under
both and the exact KL(πθ‖πref) of the two next-token distributions (`token_kl.py`); neither model's (B·K, T, V)
logits ever exist. Without one, nothing here changes.

On request (`sum_sq=True`, WPO's `loss.use_weighting`), every path also gives log Σ_v π(v | ·)² at each response
token, summed per response (`SequenceLogps.log_sum_sq_probs`): from the same logits as the log-probs, row by row in the
plain path and inside the chunk loop in the chunked ones, without gradient; not asked, nothing extra is computed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch
from dpokit.lm.attention import packed_block_mask, uses_flex
from dpokit.lm.token_kl import (
    ReferenceStates,
    ResponsePositions,
    chunked_token_kl,
    final_logits,
    log_sum_sq_probs,
    response_positions,
)


class SequenceLogps(NamedTuple):
    """Per-response log-probs of a batch, shaped by example and response.

    A named tuple, so that wrappers which hook a module's output tensors (FSDP, DeepSpeed ZeRO-3) find them.

    Attributes:
        logps: (B, K) log π(y_k | x) summed over response tokens (eos included).
        num_tokens: (B, K) response tokens counted.
        token_logps: (B, K, T) per-token log-probs, 0 where `token_mask` is False (T depends on the layout).
        token_mask: (B, K, T) bool, True on response tokens.
        kl: (B, K) Σ over response tokens of KL(π‖πref) between next-token distributions; only with a reference's
            `ReferenceStates` (`kl_sequence_logps`), else None.
        reference_logps: (B, K) log πref(y_k | x), no gradient, computed in the same chunks as `kl`; else None.
        log_sum_sq_probs: (B, K) Σ over response tokens of log Σ_v π(v | x, y<t)² (the collision log-probability of
            each next-token distribution), no gradient; only when asked (`sum_sq=True`), else None.
    """

    logps: Tensor
    num_tokens: Tensor
    token_logps: Tensor
    token_mask: Tensor
    kl: Tensor | None = None
    reference_logps: Tensor | None = None
    log_sum_sq_probs: Tensor | None = None


class HeadTokens(NamedTuple):
    """Per response token, from one pass of the LM head; (M,) or (N, T) fp32 each.

    Attributes:
        logps: log π(y_t | ·), with gradient.
        log_sum_sq_probs: log Σ_v π(v | ·)² = logsumexp(2·log_softmax(logits)), without gradient; None unless asked.
    """

    logps: Tensor
    log_sum_sq_probs: Tensor | None = None


def selected_token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position, without materialising a second (N, T, V) tensor.

    Args:
        logits: (N, T, V) next-token logits (any float dtype; computed in fp32).
        targets: (N, T) token ids.

    Returns:
        (N, T) fp32 log-probabilities.
    """
    return selected_token_stats(logits, targets).logps


def selected_token_stats(logits: Tensor, targets: Tensor, sum_sq: bool = False) -> HeadTokens:
    """`selected_token_logps`, and with `sum_sq` also (N, T) `log_sum_sq_probs`, one (T, V) row at a time."""
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    sq = torch.empty_like(out) if sum_sq else None
    for row in range(logits.shape[0]):  # one row at a time bounds the fp32 temporaries to (T, V)
        row_logits = logits[row].float()
        picked = row_logits.gather(-1, targets[row].unsqueeze(-1)).squeeze(-1)
        lse = torch.logsumexp(row_logits, dim=-1)
        out[row] = picked - lse
        if sq is not None:
            sq[row] = log_sum_sq_probs(row_logits - lse.unsqueeze(-1))
    return HeadTokens(out, sq)


def sequence_logps(model: torch.nn.Module, batch: Batch | PackedBatch, chunk_size: int = 1024,
                   reference: ReferenceStates | None = None, sum_sq: bool = False) -> SequenceLogps:
    """Response log-probs of every example and response in `batch`, by the batch's layout.

    Batches are built on the CPU; they move to the model's device here (a no-op when already there).
    With `reference`, also the token KL to it and its log-probs (`kl_sequence_logps`); with `sum_sq`, also
    `log_sum_sq_probs` (WPO's weights).
    """
    batch = batch.to(next(model.parameters()).device)
    if reference is not None:
        return kl_sequence_logps(model, batch, reference, chunk_size, sum_sq)
    if isinstance(batch, PackedBatch):
        return packed_sequence_logps(model, batch, chunk_size, sum_sq)
    return padded_sequence_logps(model, batch, sum_sq)


def padded_sequence_logps(model: torch.nn.Module, batch: Batch, sum_sq: bool = False) -> SequenceLogps:
    """Plain padded forward of all B*K rows, then the response tokens' log-probs (and `log_sum_sq_probs`).

    Position t's logits predict token t+1, so targets are `input_ids[:, 1:]` masked by `loss_mask[:, 1:]`.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    targets = batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:]
    stats = selected_token_stats(logits[:, :-1], targets, sum_sq)
    token_logps = stats.logps * mask
    b, k = batch.num_examples, batch.num_responses
    sq = None if stats.log_sum_sq_probs is None else (stats.log_sum_sq_probs * mask).sum(-1).view(b, k)
    return SequenceLogps(
        logps=token_logps.sum(-1).view(b, k),
        num_tokens=mask.sum(-1).view(b, k),
        token_logps=token_logps.view(b, k, -1),
        token_mask=mask.view(b, k, -1),
        log_sum_sq_probs=sq,
    )


def packed_sequence_logps(model: torch.nn.Module, batch: PackedBatch, chunk_size: int = 1024,
                          sum_sq: bool = False) -> SequenceLogps:
    """Backbone over the packed rows; LM head only where a response token is predicted."""
    hidden, positions = response_hidden(model, batch)
    tokens = chunked_token_stats(hidden, model.get_output_embeddings(), positions.targets, chunk_size,
                                 softcap(model), sum_sq)
    out = _per_response(tokens.logps, positions, batch.num_examples, batch.num_responses)
    return _with_sum_sq(out, tokens.log_sum_sq_probs, positions)


def kl_sequence_logps(model: torch.nn.Module, batch: Batch | PackedBatch, reference: ReferenceStates,
                      chunk_size: int = 1024, sum_sq: bool = False) -> SequenceLogps:
    """Log-probs, the reference's log-probs and the token KL to it, in any layout, through the chunked head.

    A plain padded batch too goes through the backbone and the chunked head here (not the full forward), so no
    (B·K, T, V) logits exist for either model; `tests/unit/test_token_kl.py` checks both layouts against a
    full-vocabulary computation.

    Args:
        model: the policy (gradients flow through it).
        batch: on the model's device.
        reference: πref's hidden states at `response_positions(batch)` and its head (`Reference.states`).
        chunk_size: response tokens per chunk; <= 0: all at once.
        sum_sq: also `log_sum_sq_probs`, in the same chunks.

    Returns:
        SequenceLogps with `kl` and `reference_logps` set, (B, K) each.
    """
    hidden, positions = response_hidden(model, batch)
    parts = chunked_token_kl(hidden, model.get_output_embeddings(), positions.targets, reference, chunk_size,
                             softcap(model), sum_sq)
    b, k = batch.num_examples, batch.num_responses
    out = _per_response(parts.logps, positions, b, k)
    seq_ids = positions.seq_ids
    out = out._replace(kl=_sum_by(parts.kl, seq_ids, b * k).view(b, k),
                       reference_logps=_sum_by(parts.reference_logps, seq_ids, b * k).view(b, k))
    return _with_sum_sq(out, parts.log_sum_sq_probs, positions)


def response_hidden(model: torch.nn.Module, batch: Batch | PackedBatch) -> tuple[Tensor, ResponsePositions]:
    """The backbone's last hidden states at the M positions that predict response tokens, (M, H), and where they are.

    Plain rows run the backbone with their padding mask, packed rows with their 4D mask (`packed_hidden_states`).
    """
    positions = response_positions(batch)
    backbone = model.get_decoder()
    if isinstance(batch, PackedBatch):
        hidden = packed_hidden_states(model, backbone, batch)
    else:
        hidden = backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          use_cache=False).last_hidden_state
    return hidden[positions.rows, positions.cols], positions


def head_logits(model: torch.nn.Module, hidden: Tensor) -> Tensor:
    """(n, V) fp32 next-token logits of `model` at (n, H) last hidden states: its LM head, then its softcap."""
    return final_logits(model.get_output_embeddings(), hidden, softcap(model))


def softcap(model: torch.nn.Module) -> float | None:
    """The model's final logit softcap (Gemma 2), or None."""
    return getattr(model.config, "final_logit_softcapping", None)


def _sum_by(values: Tensor, seq_ids: Tensor, n: int) -> Tensor:
    """(n,) sums of the (M,) `values` by response."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seq_ids, values)


def _with_sum_sq(out: SequenceLogps, values: Tensor | None, positions: ResponsePositions) -> SequenceLogps:
    """`out` with the (M,) per-token `log_sum_sq_probs` summed by response, when they were computed."""
    if values is None:
        return out
    b, k = out.logps.shape
    return out._replace(log_sum_sq_probs=_sum_by(values, positions.seq_ids, b * k).view(b, k))


def _per_response(token_logps: Tensor, positions: ResponsePositions, b: int, k: int) -> SequenceLogps:
    """(M,) per-token log-probs -> per-response sums, counts and the (B, K, width) per-token layout."""
    n, width = b * k, positions.width
    per_token = torch.zeros(n, width, dtype=token_logps.dtype, device=token_logps.device)
    per_token = per_token.index_put((positions.seq_ids, positions.token_pos), token_logps)
    token_mask = torch.zeros(n, width, dtype=torch.bool, device=token_logps.device)
    token_mask[positions.seq_ids, positions.token_pos] = True
    return SequenceLogps(
        logps=_sum_by(token_logps, positions.seq_ids, n).view(b, k),
        num_tokens=token_mask.sum(-1).view(b, k),
        token_logps=per_token.view(b, k, width),
        token_mask=token_mask.view(b, k, width),
    )


def packed_hidden_states(model: torch.nn.Module, backbone: torch.nn.Module, batch: PackedBatch) -> Tensor:
    """The backbone's last hidden states over the packed rows, attention confined by the batch's 4D mask.

    The mask goes in the form the model's attention implementation takes: boolean for SDPA, additive for eager,
    a FlexAttention BlockMask (`lm.attention`) for a model loaded with `train.attention=flex`.

    Args:
        model: the whole model, whose config names the attention implementation.
        backbone: its transformer without a head (`get_decoder()`, or `base_model` of a classifier).
        batch: packed rows (R, L).

    Returns:
        (R, L, H) hidden states.
    """
    mask = batch.attention_mask
    if uses_flex(model):
        mask = packed_block_mask(batch)
    elif model.config._attn_implementation != "sdpa":  # eager attention adds the mask: 0 keeps, dtype-min drops
        dtype = next(backbone.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return backbone(
        input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state


def chunked_token_logps(
    hidden: Tensor, head: torch.nn.Module, targets: Tensor, chunk_size: int, softcap: float | None = None
) -> Tensor:
    """log softmax(head(hidden))[targets] for (M, H) hidden states, `chunk_size` rows at a time.

    With gradients on, each chunk but the last runs under activation checkpointing: its (chunk, V) logits are freed
    after the forward and recomputed in backward, so no (M, V) tensor ever exists. The last chunk keeps its logits
    for backward instead: backward starts with it and frees them before recomputing any other chunk, so the peak
    stays one chunk's logits, and its recompute (a third of its head work) is saved; with one chunk, the whole
    recompute. `chunk_size` <= 0 means one chunk.
    """
    return chunked_token_stats(hidden, head, targets, chunk_size, softcap).logps


def chunked_token_stats(hidden: Tensor, head: torch.nn.Module, targets: Tensor, chunk_size: int,
                        softcap: float | None = None, sum_sq: bool = False) -> HeadTokens:
    """`chunked_token_logps`, and with `sum_sq` also each token's `log_sum_sq_probs`, from the same (chunk, V)
    logits inside the chunk loop (so no (M, V) tensor exists for it either). Returns (M,) fp32 tensors."""
    m = hidden.shape[0]
    size = chunk_size if chunk_size > 0 else max(1, m)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for start in range(0, m, size):
        args = (hidden[start:start + size], targets[start:start + size], head, softcap, sum_sq)
        recompute = grad and start + size < m  # the last chunk keeps its logits (see chunked_token_logps)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if recompute else _chunk_logps(*args))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return HeadTokens(empty, empty if sum_sq else None)
    logps = torch.cat([part[0] for part in parts])
    return HeadTokens(logps, torch.cat([part[1] for part in parts]) if sum_sq else None)


def _chunk_logps(hidden: Tensor, targets: Tensor, head: torch.nn.Module, softcap: float | None,
                 sum_sq: bool) -> tuple[Tensor, ...]:
    logits = final_logits(head, hidden, softcap)
    picked, lse = SelectedLogProb.apply(logits, targets)
    if not sum_sq:
        return (picked,)
    with torch.no_grad():
        return picked, log_sum_sq_probs(logits - lse.unsqueeze(-1))


class SelectedLogProb(torch.autograd.Function):
    """log softmax(logits)[targets] of (n, V) logits, and the rows' logsumexp (without gradient).

    Its backward writes the logits' gradient, g·(onehot − softmax), into one (n, V) buffer in three in-place passes.
    Autograd's own backward of `gather − logsumexp` builds two (n, V) tensors and adds them: a zero-filled one that
    the gather scatters into, and softmax·g for the logsumexp. On the real vocabulary (49,152 columns) that is the
    largest elementwise cost of the LM head; tests/unit/test_fast_paths.py checks values and gradients against the
    plain path and autograd's.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, lse, targets)
        ctx.mark_non_differentiable(lse)
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse, lse

    @staticmethod
    def backward(ctx, grad: Tensor, _: Tensor) -> tuple[Tensor, None]:
        logits, lse, targets = ctx.saved_tensors
        out = torch.sub(logits, lse.unsqueeze(-1)).exp_().mul_(-grad.unsqueeze(-1))
        return out.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1)), None


class PolicyLogps(torch.nn.Module):
    """The policy as a module whose forward returns response log-probs.

    Wrappers hook the *forward* of the module they wrap: DDP prepares its gradient all-reduce there, FSDP gathers
    the root's sharded weights (embeddings, final norm, LM head) there. Calling the inner model's backbone directly
    would bypass them, so the whole log-prob computation, packed paths included, runs inside this module's forward.
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, batch: Batch | PackedBatch, reference: ReferenceStates | None = None,
                sum_sq: bool = False, hidden_only: bool = False) -> SequenceLogps | Tensor:
        """Response log-probs; with `reference` (the `kl` term), also the token KL to it and its log-probs; with
        `sum_sq` (WPO), also `log_sum_sq_probs`.

        `hidden_only`: just the (M, H) hidden states at the response positions (`response_hidden`), what a
        reference gives the `kl` term: computed here, inside the forward, so a sharded model gathers its weights."""
        if hidden_only:
            return response_hidden(self.model, batch.to(next(self.model.parameters()).device))[0].clone()
        out = sequence_logps(self.model, batch, self.chunk_size, reference, sum_sq)
        # no view in the output: FSDP hooks the outputs for backward, and an in-place op on a view would lose the hook
        return SequenceLogps(*(t.clone() if t is not None and t._is_view() else t for t in out))
