"""Tokenized examples -> padded tensors: the plain (reference) batch layout every fast path is checked against.

Each example contributes K rows, `prompt + response_k`, in preference order; rows are right-padded to the longest.

>>> ex = TokenizedExample(index=7, prompt_ids=(5, 6), response_ids=((7, 0), (8, 9, 0)))
>>> b = collate([ex], pad_id=1)
>>> b.input_ids.tolist()
[[5, 6, 7, 0, 1], [5, 6, 8, 9, 0]]
>>> b.loss_mask.int().tolist()   # response tokens (targets) only
[[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
>>> b.indices.tolist(), b.num_responses
([7], 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dpokit.data.tokenize import TokenizedExample


@dataclass
class Batch:
    input_ids: Tensor  # (B*K, T) long; row b*K + k is example b's k-th response
    attention_mask: Tensor  # (B*K, T) long, 1 on real tokens
    loss_mask: Tensor  # (B*K, T) bool, True on response tokens (the positions whose log-prob counts)
    num_responses: int  # K
    indices: Tensor  # (B,) dataset index of each example (the reference cache key)
    labels: Tensor | None = None  # (B,) bool, unpaired (KTO) batches only

    @property
    def num_examples(self) -> int:
        return self.indices.numel()

    def to(self, device: torch.device | str) -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                     loss_mask=self.loss_mask.to(device), num_responses=self.num_responses, indices=self.indices,
                     labels=labels)


def collate(examples: list[TokenizedExample], pad_id: int, unpaired: bool = False) -> Batch:
    """Pads `prompt + response` rows of every example into one batch.

    Args:
        examples: B tokenized examples with the same number K of responses.
        pad_id: id written into padding positions (masked out everywhere).
        unpaired: KTO layout. Each example has one response; a second row pairs its prompt with the *next*
            example's response (cyclically), a mismatched completion used only to estimate the KL reference point.
    """
    if unpaired:
        rows = [(ex.prompt_ids, ex.response_ids[0]) for ex in examples]
        rows = [r for i, (p, resp) in enumerate(rows) for r in ((p, resp), (p, rows[(i + 1) % len(rows)][1]))]
        k = 2
    else:
        k = len(examples[0].response_ids)
        if any(len(ex.response_ids) != k for ex in examples):
            raise ValueError("all examples in a batch must have the same number of responses")
        rows = [(ex.prompt_ids, resp) for ex in examples for resp in ex.response_ids]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, resp) in enumerate(rows):
        n = len(prompt) + len(resp)
        input_ids[i, :n] = torch.tensor(prompt + resp)
        attention_mask[i, :n] = 1
        loss_mask[i, len(prompt):n] = True
    labels = torch.tensor([bool(ex.label) for ex in examples]) if unpaired else None
    indices = torch.tensor([ex.index for ex in examples], dtype=torch.long)
    return Batch(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, num_responses=k,
                 indices=indices, labels=labels)
