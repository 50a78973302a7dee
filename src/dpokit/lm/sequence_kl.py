"""Sequence-level KL(π‖πref) of sampled completions, the x-axis of the DPO paper's reward–KL frontier (§6.1).

For a completion y = (y_1, ..., y_T) sampled from π given prompt x (y_T is eos unless the budget ran out):

    KL_seq(y) = Σ_{t=1..T} KL(π(·|x, y_<t) ‖ πref(·|x, y_<t))
              = Σ_t Σ_v π(v|x, y_<t) [log π(v|x, y_<t) − log πref(v|x, y_<t)]

Its mean over samples y ~ π is an unbiased estimate of KL(π(·|x) ‖ πref(·|x)) over whole completions (the tower rule
turns E_y[Σ_t log π(y_t)/πref(y_t)] into E_y[Σ_t KL_t]), and it has lower variance than the plain log-ratio
estimate Σ_t log π(y_t)/πref(y_t), because each term averages over the whole next-token distribution instead of
one drawn token. Each term is a true KL, so every sample's estimate is >= 0, and exactly 0 when π = πref.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def token_kl(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    """KL(softmax(policy) ‖ softmax(reference)) per position, in fp32.

    Args:
        policy_logits: (N, V) next-token logits of π at N contexts.
        reference_logits: (N, V) logits of πref at the same contexts.

    Returns:
        (N,) per-position KL, >= 0.
    """
    logp = policy_logits.float().log_softmax(-1)
    logq = reference_logits.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@torch.no_grad()
def sequence_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> Tensor:
    """Σ over each completion's tokens of the per-token KL, teacher-forced on the sampled ids (module docstring).

    Rows are `prompt + completion`, right-padded, so positions start at 0 as in training. Position t's logits
    predict token t+1; the completion's T tokens are predicted at positions len(prompt)-1 ... len(prompt)+T-2.

    Args:
        policy: π (eval mode is the caller's business; dropout would make the estimate noisy).
        reference: πref; may be the same module (then every KL is exactly 0).
        prompt_ids: N unpadded prompts.
        completion_ids: N sampled completions, including their eos when they have one.
        batch_size: rows per forward.

    Returns:
        (N,) fp32 KL per completion, in nats.
    """
    out = torch.zeros(len(prompt_ids))
    device = next(policy.parameters()).device
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start:start + batch_size]
        completions = completion_ids[start:start + batch_size]
        input_ids, attention_mask = _right_pad([[*p, *c] for p, c in zip(prompts, completions, strict=True)])
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = policy(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        ref_logits = reference(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            first, count = len(prompt) - 1, len(completion)
            if count == 0:
                continue
            kl = token_kl(logits[row, first:first + count], ref_logits[row, first:first + count])
            out[start + row] = kl.sum().cpu()
    return out


def _right_pad(rows: list[list[int]]) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), (N, T) long; padding ids are 0 and masked out."""
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask
