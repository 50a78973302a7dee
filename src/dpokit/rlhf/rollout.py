"""PPO's data: the actor-critic (a causal LM with a value head on its trunk), its forward over response tokens, and a
rollout batch (sampled responses with their scores, log-probs, values, rewards and advantages).

The value head is *shared-trunk*: one linear layer V(s) = w·h_L(s) + b on the policy's last hidden state (after the
final norm, the vector the LM head reads). One network, one forward for both heads, one copy of the weights in memory
and in the optimizer; the price is that the value loss's gradients also move the policy's trunk (scaled by
`vf_coef`). A separate value network (Stiennon et al. initialise one from the reward model) avoids that interference
at twice the memory and compute.

Rows are `prompt + response`, right-padded, positions from 0 as in training; position t's outputs belong to token
t+1, so response token j (0-based) of a row with P prompt tokens is predicted, and its state valued, at position
P − 1 + j (the convention of `lm/sequence_kl.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from dpokit.rlhf import ppo


class ActorCritic(torch.nn.Module):
    """A causal LM (`.model`, the policy) and a linear value head on its last hidden state (`.value_head`).

    The head starts at zero (V ≡ 0), so it adds nothing random to the run and the first advantages are the rewards.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        hidden = model.get_output_embeddings().in_features
        self.value_head = torch.nn.Linear(hidden, 1, dtype=model.get_output_embeddings().weight.dtype)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(logits (N, L, V), values (N, L)) at every position of the rows."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         use_cache=False)
        return out.logits, self.value_head(out.hidden_states[-1]).squeeze(-1).float()


@dataclass
class Rows:
    """Prompt + response rows and where their response tokens sit.

    Attributes:
        input_ids: (N, L) right-padded prompt + response ids.
        attention_mask: (N, L) 1 on real tokens.
        positions: (N, T) the position whose outputs belong to response token j (P − 1 + j; 0 on padding).
        tokens: (N, T) the response ids, right-padded.
        mask: (N, T) 1 on real response tokens.
    """

    input_ids: Tensor
    attention_mask: Tensor
    positions: Tensor
    tokens: Tensor
    mask: Tensor

    @classmethod
    def build(cls, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int) -> Rows:
        width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True))
        longest = max(len(r) for r in response_ids)
        n = len(prompt_ids)
        input_ids, attention_mask = torch.full((n, width), pad_id), torch.zeros((n, width), dtype=torch.long)
        positions, tokens = torch.zeros((n, longest), dtype=torch.long), torch.full((n, longest), pad_id)
        mask = torch.zeros((n, longest))
        for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
            row = [*prompt, *response]
            input_ids[i, :len(row)], attention_mask[i, :len(row)] = torch.tensor(row), 1
            tokens[i, :len(response)], mask[i, :len(response)] = torch.tensor(list(response)), 1
            positions[i, :len(response)] = torch.arange(len(prompt) - 1, len(row) - 1)
        return cls(input_ids, attention_mask, positions, tokens, mask)

    def select(self, index: Tensor) -> Rows:
        return Rows(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: torch.device) -> Rows:
        return Rows(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class TokenOutputs:
    """What a forward gives at the response tokens, each (N, T) fp32, 0 on padding."""

    logprobs: Tensor  # log π(y_t | s_t)
    values: Tensor  # V(s_t); zeros for a model without a value head
    entropy: Tensor  # H(π(· | s_t))


class FrozenActor(torch.nn.Module):
    """πref for PPO: a frozen causal LM with `ActorCritic`'s call signature and no value head (its values are 0)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits, torch.zeros(input_ids.shape, device=logits.device)


class AdapterOffActor(torch.nn.Module):
    """πref for a LoRA PPO run: the policy's own network with its adapter switched off (no second copy in memory),
    with `FrozenActor`'s call signature. The LoRA update starts at zero, so this is exactly the starting model.

    The policy is held outside the module tree (its parameters are the policy's, not the reference's); `engine` is
    what the forward runs, the actor-critic itself or, when the process group wraps it, the wrapped one.
    """

    def __init__(self, actor: ActorCritic) -> None:
        super().__init__()
        self.__dict__["peft"] = actor.model  # not a submodule
        self.__dict__["engine"] = actor

    def run_through(self, engine: torch.nn.Module) -> None:
        """Runs the forward through `engine`, the actor-critic as the process group wraps it."""
        self.__dict__["engine"] = engine

    @torch.no_grad()
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        was_training = self.peft.training
        self.peft.eval()
        try:
            with self.peft.disable_adapter():
                logits, values = self.engine(input_ids, attention_mask)
        finally:
            self.peft.train(was_training)
        return logits, torch.zeros_like(values)


def response_outputs(model: torch.nn.Module, rows: Rows) -> TokenOutputs:
    """Log-probs of the response tokens, values and entropies, from an `ActorCritic` (maybe DDP-wrapped) or a
    `FrozenActor`. Gradients flow if enabled; log-softmax in fp32."""
    logits, values = model(rows.input_ids, rows.attention_mask)
    index = torch.arange(rows.positions.shape[0], device=logits.device)[:, None]
    logp = logits[index, rows.positions].float().log_softmax(-1)  # (N, T, V)
    token_logp = logp.gather(-1, rows.tokens[..., None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return TokenOutputs(token_logp * rows.mask, values[index, rows.positions] * rows.mask, entropy * rows.mask)


@dataclass
class Rollout:
    """One process's share of a rollout batch, everything the optimisation epochs read.

    Attributes:
        rows: the sampled rows.
        scores: (N,) the reward of each response.
        logprobs / ref_logprobs / values / entropy: (N, T) at sampling time (`TokenOutputs` of π_old and πref).
        advantages / returns: (N, T) from `ppo.gae` over the KL-penalised rewards (advantages whitened if asked).
    """

    rows: Rows
    scores: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    entropy: Tensor
    advantages: Tensor
    returns: Tensor

    def __len__(self) -> int:
        return self.scores.shape[0]


@torch.no_grad()
def score_tokens(model: torch.nn.Module, rows: Rows, batch_size: int) -> TokenOutputs:
    """`response_outputs` in chunks of `batch_size` rows, without gradients, in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    n = rows.input_ids.shape[0]
    try:
        parts = [response_outputs(model, rows.select(torch.arange(s, min(s + batch_size, n))))
                 for s in range(0, n, batch_size)]
    finally:
        model.train(was_training)
    return TokenOutputs(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(TokenOutputs)))


def advantages_of(scores: Tensor, old: TokenOutputs, ref: TokenOutputs, mask: Tensor, beta: float, gamma: float,
                  lam: float) -> ppo.Advantages:
    """Per-token KL-penalised rewards (`ppo.kl_penalised_rewards`) of a rollout, then `ppo.gae` over them.

    Args:
        scores: (N,) rewards of the responses.
        old: π_old's log-probs and values at sampling time; ref: πref's log-probs; mask: (N, T).
    """
    rewards = ppo.kl_penalised_rewards(scores, old.logprobs, ref.logprobs, mask, beta)
    return ppo.gae(rewards, old.values, mask, gamma, lam)
