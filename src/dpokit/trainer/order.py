"""The order examples are visited in: seeded, endless over epochs, optionally length-bucketed."""

from __future__ import annotations

from collections.abc import Iterator

import torch

BUCKET_WINDOW = 64  # batches per window that bucketing sorts within: big enough to find equals, small enough to mix


def batch_indices(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True,
                  bucketing: bool = False) -> Iterator[list[int]]:
    """Endless stream of batches of dataset indices; epoch e uses the permutation seeded by `seed + e`.

    With `bucketing`, each window of BUCKET_WINDOW batches is sorted by length and cut into batches whose order is
    then shuffled: batches hold examples of similar length (less padding, tighter packing) yet every example is
    still visited once per epoch, deterministically under the seed.
    """
    carry: list[int] = []
    epoch = 0
    while True:
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(lengths), generator=generator).tolist() if shuffle else list(range(len(lengths)))
        if bucketing:
            order = _bucketed(order, lengths, batch_size, generator)
        for index in order:
            carry.append(index)
            if len(carry) == batch_size:
                yield carry
                carry = []
        epoch += 1


def _bucketed(order: list[int], lengths: list[int], batch_size: int, generator: torch.Generator) -> list[int]:
    window = batch_size * BUCKET_WINDOW
    groups = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(groups), generator=generator).tolist()
    return [i for g in shuffled for i in groups[g]]
