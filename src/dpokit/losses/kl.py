"""An explicit KL(πθ‖πref) regulariser beside a preference loss: L = L_pref + λ·KL, written "sigmoid + λ*kl".

DPO keeps πθ near πref only through the log-ratios of the dataset's own responses: β scales them, but nothing holds
the rest of each next-token distribution in place (the probability DPO takes from a rejected token can go to any
other token). The `kl` term measures, at every response position of the batch, the whole next-token distribution:

    KL_t = Σ_v πθ(v | x, y_<t) · [log πθ(v | x, y_<t) − log πref(v | x, y_<t)]      (exact, over the vocabulary)

The trainer computes the per-token KL_t through its chunked LM head (`dpokit.lm.logprobs`) and hands the loss each
response's sum over its tokens, (B, K); this file only averages them.
"""

from __future__ import annotations

from torch import Tensor


def token_kl_loss(kl_sums: Tensor, num_tokens: Tensor) -> Tensor:
    """Mean per-token KL(πθ‖πref) of each example over the tokens of all its responses.

        L = Σ_k Σ_{t ∈ y_k} KL_t / Σ_k |y_k|

    Every response counts, chosen and rejected alike: a KL at a context does not depend on which token follows it,
    the responses only supply the contexts, and the rejected ones are where a preference loss moves πθ most (it
    pushes their tokens down, and the freed probability lands elsewhere). Each token weighs the same within an
    example; examples weigh the same in the batch mean, as in every other loss.

    Args:
        kl_sums: (B, K) Σ over the tokens of response k of KL_t, >= 0.
        num_tokens: (B, K) response tokens summed.

    Returns:
        (B,) per-example loss, in nats per token.
    """
    return kl_sums.sum(-1) / num_tokens.sum(-1).to(kl_sums.dtype).clamp(min=1)
