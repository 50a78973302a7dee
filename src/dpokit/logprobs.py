"""Log-probabilities of the response tokens under a model: the quantity every DPO-family loss is built from.

Two paths give the same numbers (tests check loss and gradients):
- plain (`Batch`): the model's full forward, logits for every position of every padded row.
- fast (`PackedBatch`): the backbone over packed rows, then the LM head only at the positions that predict response
  tokens, in chunks, each chunk's logits recomputed in backward instead of stored: peak memory for logits is
  (chunk, V) instead of (B·K, T, V).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from dpokit.data.collate import Batch
from dpokit.data.packing import PackedBatch


class SequenceLogps(NamedTuple):
    """Per-response log-probs of a batch, shaped by example and response.

    A named tuple, so that wrappers which hook a module's output tensors (FSDP, DeepSpeed ZeRO-3) find them.

    Attributes:
        logps: (B, K) log π(y_k | x) summed over response tokens (eos included).
        num_tokens: (B, K) response tokens counted.
        token_logps: (B, K, T) per-token log-probs, 0 where `token_mask` is False (T depends on the layout).
        token_mask: (B, K, T) bool, True on response tokens.
    """

    logps: Tensor
    num_tokens: Tensor
    token_logps: Tensor
    token_mask: Tensor


def selected_token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] per position, without materialising a second (N, T, V) tensor.

    Args:
        logits: (N, T, V) next-token logits (any float dtype; computed in fp32).
        targets: (N, T) token ids.

    Returns:
        (N, T) fp32 log-probabilities.
    """
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):  # one row at a time bounds the fp32 temporaries to (T, V)
        row_logits = logits[row].float()
        picked = row_logits.gather(-1, targets[row].unsqueeze(-1)).squeeze(-1)
        out[row] = picked - torch.logsumexp(row_logits, dim=-1)
    return out


def sequence_logps(model: torch.nn.Module, batch: Batch | PackedBatch, chunk_size: int = 1024) -> SequenceLogps:
    """Response log-probs of every example and response in `batch`, by the batch's layout.

    Batches are built on the CPU; they move to the model's device here (a no-op when already there).
    """
    batch = batch.to(next(model.parameters()).device)
    if isinstance(batch, PackedBatch):
        return packed_sequence_logps(model, batch, chunk_size)
    return padded_sequence_logps(model, batch)


def padded_sequence_logps(model: torch.nn.Module, batch: Batch) -> SequenceLogps:
    """Plain padded forward of all B*K rows, then the response tokens' log-probs.

    Position t's logits predict token t+1, so targets are `input_ids[:, 1:]` masked by `loss_mask[:, 1:]`.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    targets = batch.input_ids[:, 1:]
    mask = batch.loss_mask[:, 1:]
    token_logps = selected_token_logps(logits[:, :-1], targets) * mask
    b, k = batch.num_examples, batch.num_responses
    return SequenceLogps(
        logps=token_logps.sum(-1).view(b, k),
        num_tokens=mask.sum(-1).view(b, k),
        token_logps=token_logps.view(b, k, -1),
        token_mask=mask.view(b, k, -1),
    )


def packed_sequence_logps(model: torch.nn.Module, batch: PackedBatch, chunk_size: int = 1024) -> SequenceLogps:
    """Backbone over the packed rows; LM head only where a response token is predicted."""
    head = model.get_output_embeddings()
    hidden = packed_hidden_states(model, model.get_decoder(), batch)
    picked = hidden[batch.pred_rows, batch.pred_cols]  # (M, H)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    token_logps = chunked_token_logps(picked, head, batch.targets, chunk_size, softcap)
    b, k = batch.num_examples, batch.num_responses
    n = b * k
    logps = torch.zeros(n, dtype=token_logps.dtype, device=token_logps.device).index_add(0, batch.seq_ids, token_logps)
    width = batch.max_response_len
    per_token = torch.zeros(n, width, dtype=token_logps.dtype, device=token_logps.device)
    per_token = per_token.index_put((batch.seq_ids, batch.token_pos), token_logps)
    token_mask = torch.zeros(n, width, dtype=torch.bool, device=token_logps.device)
    token_mask[batch.seq_ids, batch.token_pos] = True
    return SequenceLogps(
        logps=logps.view(b, k),
        num_tokens=token_mask.sum(-1).view(b, k),
        token_logps=per_token.view(b, k, width),
        token_mask=token_mask.view(b, k, width),
    )


def packed_hidden_states(model: torch.nn.Module, backbone: torch.nn.Module, batch: PackedBatch) -> Tensor:
    """The backbone's last hidden states over the packed rows, attention confined by the batch's 4D mask.

    Args:
        model: the whole model, whose config names the attention implementation.
        backbone: its transformer without a head (`get_decoder()`, or `base_model` of a classifier).
        batch: packed rows (R, L).

    Returns:
        (R, L, H) hidden states.
    """
    mask = batch.attention_mask
    if model.config._attn_implementation != "sdpa":  # eager attention adds the mask: 0 keeps, dtype-min drops
        dtype = next(backbone.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return backbone(
        input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids, use_cache=False
    ).last_hidden_state


def chunked_token_logps(
    hidden: Tensor, head: torch.nn.Module, targets: Tensor, chunk_size: int, softcap: float | None = None
) -> Tensor:
    """log softmax(head(hidden))[targets] for (M, H) hidden states, `chunk_size` rows at a time.

    With gradients on, each chunk runs under activation checkpointing: its (chunk, V) logits are freed after the
    forward and recomputed in backward, so no (M, V) tensor ever exists. `chunk_size` <= 0 means one chunk.
    """
    size = chunk_size if chunk_size > 0 else max(1, hidden.shape[0])
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for start in range(0, hidden.shape[0], size):
        args = (hidden[start:start + size], targets[start:start + size], head, softcap)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if grad else _chunk_logps(*args))
    if not parts:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def _chunk_logps(hidden: Tensor, targets: Tensor, head: torch.nn.Module, softcap: float | None) -> Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


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

    def forward(self, batch: Batch | PackedBatch) -> SequenceLogps:
        out = sequence_logps(self.model, batch, self.chunk_size)
        # no view in the output: FSDP hooks the outputs for backward, and an in-place op on a view would lose the hook
        return SequenceLogps(*(t.clone() if t._is_view() else t for t in out))
