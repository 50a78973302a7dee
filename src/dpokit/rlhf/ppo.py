"""PPO-RLHF's pure pieces (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"; Stiennon et al.
2020; Schulman et al. 2017 for PPO, 2016 for GAE): per-token rewards, advantages, the two losses, the KL controller.

Every tensor over response tokens is (N, T): N sampled responses, right-padded to the longest, T tokens; `mask` (N, T)
is 1 on real response tokens (each row's ones are a prefix: the response, then padding). Token t of a response is an
action taken in the state (prompt, y_<t); the episode ends after the last real token.

The reward of Ziegler et al. (their eq. 2): the score s(x, y) of the whole response, paid at its last token, minus a
KL penalty at every token,

    r_t = −β (log π(y_t | x, y_<t) − log πref(y_t | x, y_<t)) + [t = last] · s(x, y),

whose expected sum is E_π[s] − β·KL(π‖πref): the objective whose maximiser is π*(y|x) ∝ πref(y|x)·exp(s(x, y)/β),
the policy DPO fits in closed form.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def kl_penalised_rewards(score: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token rewards r_t = −β (log π − log πref) at every response token, plus the score at the last one.

    Args:
        score: (N,) the reward of each whole response (a reward model's output, or any reward function's).
        logprobs: (N, T) log π(y_t | x, y_<t) of the sampled tokens, under the policy that sampled them.
        ref_logprobs: (N, T) log πref of the same tokens.
        mask: (N, T) 1 on real tokens; every row has at least one.
        beta: the KL coefficient β.

    Returns:
        (N, T) rewards, 0 on padding.

    >>> kl_penalised_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -2.0, 0.0]]),
    ...                      torch.tensor([[-1.5, -1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]), beta=0.1)
    tensor([[-0.0500,  1.1000,  0.0000]])
    """
    mask = mask.to(logprobs.dtype)
    rewards = beta * (ref_logprobs - logprobs) * mask  # −β(log π − log πref), +0.0 (not −0.0) on padding
    last = mask.sum(1).long() - 1
    if (last < 0).any():
        raise ValueError("every response needs at least one token to carry its score")
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += score.to(rewards.dtype)
    return rewards


class Advantages(NamedTuple):
    advantages: Tensor  # (N, T) Â_t, 0 on padding
    returns: Tensor  # (N, T) Â_t + V_t: the value head's regression target, 0 on padding


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> Advantages:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), each row an episode ending at its last token.

        δ_t = r_t + γ V_{t+1} − V_t,      Â_t = δ_t + γλ Â_{t+1},      V_{T} = Â_{T} = 0 past the last token,

    and the returns R_t = Â_t + V_t. With λ = 1 and γ = 1, Â_t = Σ_{u>=t} r_u − V_t (Monte Carlo); with λ = 0,
    Â_t = δ_t (one-step TD).

    Args:
        rewards: (N, T) per-token rewards (`kl_penalised_rewards`).
        values: (N, T) V(x, y_<t) from the value head, at the time of the rollout.
        mask: (N, T) 1 on real tokens, a prefix of each row.
        gamma: discount γ (1.0 in RLHF: the episode is one response).
        lam: GAE's λ, trading the bias of bootstrapping against the variance of sums.

    Returns:
        `Advantages(advantages, returns)`, both (N, T), 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_advantage
    return Advantages(advantages, (advantages + values) * mask)


def whiten(values: Tensor, mask: Tensor, stats: tuple[float, float, float] | None = None,
           shift_mean: bool = True) -> Tensor:
    """(x − mean) / std over the real tokens (std with Bessel's correction), padding left at 0.

    Args:
        values: (N, T).
        mask: (N, T) 1 on real tokens.
        stats: (Σx, Σx², count) over the real tokens of every process, so N processes whiten a global batch as one
            process would; None: this tensor's own.
        shift_mean: False keeps the mean (scales only).
    """
    mask = mask.to(values.dtype)
    total, squares, count = stats if stats is not None else moments(values, mask)
    mean = total / count
    var = (squares - count * mean**2) / max(count - 1, 1)
    out = (values - mean) * torch.rsqrt(torch.tensor(max(var, 0.0) + 1e-8, dtype=values.dtype))
    if not shift_mean:
        out = out + mean
    return out * mask


def moments(values: Tensor, mask: Tensor) -> tuple[float, float, float]:
    """(Σx, Σx², count) over the real tokens: what `whiten` needs, summable across processes."""
    mask = mask.to(values.dtype)
    return float((values * mask).sum()), float((values**2 * mask).sum()), float(mask.sum())


class PolicyLoss(NamedTuple):
    loss: Tensor  # scalar: Σ over real tokens of the clipped surrogate, divided by `num_tokens`
    clip_fraction: Tensor  # scalar: fraction of real tokens whose ratio left [1 − ε, 1 + ε]
    approx_kl: Tensor  # scalar: mean of (ρ − 1) − log ρ, an estimate of KL(π_old ‖ π) >= 0 per token


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float,
                    num_tokens: float | None = None) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), to minimise:

        ρ_t = π(y_t | s_t) / π_old(y_t | s_t),      L = −min(ρ_t Â_t, clip(ρ_t, 1 − ε, 1 + ε) Â_t),

    averaged over the real tokens. `num_tokens` divides the sum instead of this batch's own count: the count of a
    whole global minibatch when it is split across processes, so their gradients add up to one process's.

    Args:
        logprobs: (N, T) log π of the sampled tokens under the policy being trained (with grad).
        old_logprobs: (N, T) the same under the policy that sampled them (no grad).
        advantages: (N, T) Â_t.
        mask: (N, T) 1 on real tokens.
        clip_range: ε.
        num_tokens: the divisor; None: `mask.sum()`.
    """
    mask = mask.to(logprobs.dtype)
    count = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = log_ratio.exp()
    surrogate = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    with torch.no_grad():
        own = mask.sum().clamp(min=1)
        clipped = ((ratio - 1).abs() > clip_range).to(mask.dtype)
        approx_kl = ((ratio - 1 - log_ratio) * mask).sum() / own
    return PolicyLoss((surrogate * mask).sum() / count, (clipped * mask).sum() / own, approx_kl)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float | None,
               num_tokens: float | None = None) -> Tensor:
    """The value head's clipped regression loss (as in PPO's reference implementation, OpenAI baselines ppo2):

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v),      L_V = ½ max((V − R)², (V_clip − R)²),

    averaged over real tokens like `ppo_policy_loss`. `clip_range` None: the plain ½ (V − R)².

    Args:
        values: (N, T) V(s_t) now (with grad).
        old_values: (N, T) V(s_t) at the rollout.
        returns: (N, T) R_t from `gae`.
        mask: (N, T) 1 on real tokens.
        clip_range: ε_v, in the reward's units; None: no clipping.
        num_tokens: the divisor; None: `mask.sum()`.
    """
    mask = mask.to(values.dtype)
    count = num_tokens if num_tokens is not None else mask.sum().clamp(min=1)
    loss = (values - returns) ** 2
    if clip_range is not None:
        clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum() / count


class FixedKL:
    """A constant KL coefficient β. Shares `AdaptiveKL`'s interface (update, state_dict) so the loop never asks."""

    def __init__(self, beta: float) -> None:
        self.beta = beta

    def update(self, kl: float, num_samples: int) -> None:
        """Nothing changes."""

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])


class AdaptiveKL(FixedKL):
    """Ziegler et al. (2019, §2.2)'s controller: β moves so the measured KL tracks a target.

        e = clip(KL / KL_target − 1, −0.2, 0.2),      β ← β (1 + e · n / horizon),

    with n the samples of the rollout batch just measured: β changes by at most 20% over `horizon` samples.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        super().__init__(beta)
        self.target, self.horizon = target, horizon

    def update(self, kl: float, num_samples: int) -> None:
        """`kl`: the mean sequence KL of the rollout batch; `num_samples`: its size."""
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + error * num_samples / self.horizon
