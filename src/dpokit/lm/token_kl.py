"""Exact per-token KL(πθ‖πref) over the vocabulary at every response token, through a chunked LM head.

The `kl` loss term needs, at each response token t of a batch, the KL between the policy's and the reference's
whole next-token distributions. With V in the tens of thousands, the (B·K, T, V) logits of even one model are the
largest tensors of a step, so both models go through their backbones first, keep only the M hidden states that
predict response tokens, and run their LM heads a chunk of tokens at a time::

    policy hidden (M, H) ──┐   per chunk of c tokens:                    reference hidden (M, H_ref), no grad
                           ├─▶ log πθ = log_softmax(head(h))   (c, V) ◀── log πref = log_softmax(head_ref(h_ref))
                           │   KL_t = Σ_v πθ(v) (log πθ(v) − log πref(v)), log πθ(y_t), log πref(y_t)   (c,)

With gradients on, each chunk runs under activation checkpointing (as `logprobs.chunked_token_logps` does): its
(c, V) tensors are freed after the forward and recomputed in backward, so peak extra memory is a few (c, V) fp32
tensors (both models' logits, their log-softmaxes, πθ) instead of 2·(M, V). Gradients reach the policy only: the
reference's hidden states come without one and its head runs under `no_grad`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch


class ReferenceStates(NamedTuple):
    """The reference's side of the token KL for one batch: what the policy's chunk loop needs from it.

    Attributes:
        hidden: (M, H_ref) πref's last hidden states at the positions that predict the batch's M response tokens,
            in `response_positions` order; no gradient.
        logits: maps (n, H_ref) of those hidden states to πref's (n, V) fp32 next-token logits, without gradient
            (its LM head and softcap; with LoRA, the policy's head with the adapter off).
    """

    hidden: Tensor
    logits: Callable[[Tensor], Tensor]


class ResponsePositions(NamedTuple):
    """Where each of a batch's M response tokens is predicted, whatever the layout.

    Attributes:
        rows: (M,) row of the backbone output whose hidden state predicts the token.
        cols: (M,) column of that hidden state.
        targets: (M,) the token ids.
        seq_ids: (M,) b·K + k, the response each token belongs to.
        token_pos: (M,) the token's column in the (B, K, width) per-token layout.
        width: T of that layout (plain: the padded row length − 1; packed: the longest response).
    """

    rows: Tensor
    cols: Tensor
    targets: Tensor
    seq_ids: Tensor
    token_pos: Tensor
    width: int


def response_positions(batch: Batch | PackedBatch) -> ResponsePositions:
    """The M response-token positions of `batch`, in the order both models' chunk loops use.

    Plain rows: position t predicts token t + 1, so the predicting positions are where `loss_mask[:, 1:]` is True,
    row by row; packed rows carry them (`pred_rows`, `pred_cols`, ...).
    """
    if isinstance(batch, PackedBatch):
        return ResponsePositions(batch.pred_rows, batch.pred_cols, batch.targets, batch.seq_ids, batch.token_pos,
                                 batch.max_response_len)
    mask = batch.loss_mask[:, 1:]
    rows, cols = mask.nonzero(as_tuple=True)
    return ResponsePositions(rows, cols, batch.input_ids[:, 1:][rows, cols], rows, cols, mask.shape[1])


def final_logits(head: torch.nn.Module, hidden: Tensor, softcap: float | None) -> Tensor:
    """(n, V) fp32 logits of `head` at (n, H) hidden states, soft-capped as the model's config says (Gemma 2)."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def log_sum_sq_probs(logp: Tensor) -> Tensor:
    """log Σ_v p(v)² of each row of (..., V) log-probabilities, without gradient: logsumexp(2·log p) over V.

    WPO's (Zhou et al. 2024, arXiv 2406.11827, eq. 2) normaliser of a token's probability: log p(y_t) minus this is
    the token's log-probability relative to the distribution's own expected probability Σ_v p(v)·p(v).
    """
    with torch.no_grad():
        return torch.logsumexp(2 * logp.detach(), dim=-1)


class TokenKL(NamedTuple):
    """Per response token, (M,) fp32 each.

    Attributes:
        logps: log πθ(y_t | ·), with gradient.
        reference_logps: log πref(y_t | ·), without.
        kl: KL(πθ(· | ·) ‖ πref(· | ·)) over the whole vocabulary, >= 0, with gradient through πθ.
        log_sum_sq_probs: log Σ_v πθ(v | ·)², without gradient (WPO's weights); None unless asked.
    """

    logps: Tensor
    reference_logps: Tensor
    kl: Tensor
    log_sum_sq_probs: Tensor | None = None


def chunked_token_kl(hidden: Tensor, head: torch.nn.Module, targets: Tensor, reference: ReferenceStates,
                     chunk_size: int, softcap: float | None = None, sum_sq: bool = False) -> TokenKL:
    """Log-probs under both models and the exact token KL, `chunk_size` response tokens at a time.

    Args:
        hidden: (M, H) policy hidden states predicting the M response tokens.
        head: the policy's LM head.
        targets: (M,) response token ids.
        reference: πref's hidden states at the same M positions, and its head.
        chunk_size: tokens per chunk; <= 0 means one chunk.
        softcap: the policy's final logit softcap, if its config has one.
        sum_sq: also log Σ_v πθ(v)² per token, from the same chunk's log-probs.

    Raises:
        ValueError: the reference's hidden states are not at the same M positions, or its vocabulary differs.
    """
    if reference.hidden.shape[0] != hidden.shape[0]:
        raise ValueError(f"reference states cover {reference.hidden.shape[0]} response tokens, the policy's "
                         f"{hidden.shape[0]}: they must come from the same batch")
    size = chunk_size if chunk_size > 0 else max(1, hidden.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for start in range(0, hidden.shape[0], size):
        args = (hidden[start:start + size], targets[start:start + size], head, softcap,
                reference.hidden[start:start + size], reference.logits, sum_sq)
        parts.append(checkpoint(_chunk_kl, *args, use_reentrant=False) if grad else _chunk_kl(*args))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return TokenKL(empty, empty, empty, empty if sum_sq else None)
    return TokenKL(*(torch.cat(column) for column in zip(*parts, strict=True)))


def _chunk_kl(hidden: Tensor, targets: Tensor, head: torch.nn.Module, softcap: float | None, ref_hidden: Tensor,
              ref_logits: Callable[[Tensor], Tensor], sum_sq: bool = False) -> tuple[Tensor, ...]:
    logp = final_logits(head, hidden, softcap).log_softmax(-1)
    with torch.no_grad():
        logq = ref_logits(ref_hidden).float().log_softmax(-1)
    if logq.shape != logp.shape:
        raise ValueError(f"the reference's vocabulary ({logq.shape[-1]} logits) differs from the policy's "
                         f"({logp.shape[-1]}): a token KL needs the same vocabulary")
    kl = (logp.exp() * (logp - logq)).sum(-1)
    index = targets.unsqueeze(-1)
    out = (logp.gather(-1, index).squeeze(-1), logq.gather(-1, index).squeeze(-1), kl)
    return out + (log_sum_sq_probs(logp),) if sum_sq else out
