"""Log-probabilities of the response tokens under a model: the quantity every DPO-family loss is built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dpokit.data.collate import Batch


@dataclass
class SequenceLogps:
    """Per-response log-probs of a batch, shaped by example and response.

    Attributes:
        logps: (B, K) log π(y_k | x) summed over response tokens (eos included).
        num_tokens: (B, K) response tokens counted.
        token_logps: (B, K, T-1) per-token log-probs, 0 where `token_mask` is False.
        token_mask: (B, K, T-1) bool, True on response tokens.
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


def sequence_logps(model: torch.nn.Module, batch: Batch) -> SequenceLogps:
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
