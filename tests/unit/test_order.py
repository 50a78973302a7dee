"""Example order: seeded, every example once per epoch, bucketing groups similar lengths."""

from __future__ import annotations

import itertools

from dpokit.trainer.order import batch_indices


def take(stream, n):
    return list(itertools.islice(stream, n))


def test_each_epoch_visits_every_example_once_and_is_seeded():
    lengths = list(range(40))
    batches = take(batch_indices(lengths, 8, seed=1), 10)  # two epochs
    for epoch in (batches[:5], batches[5:]):
        assert sorted(i for b in epoch for i in b) == list(range(40))
    assert batches[:5] != batches[5:]  # reshuffled
    assert take(batch_indices(lengths, 8, seed=1), 10) == batches
    assert take(batch_indices(lengths, 8, seed=2), 10) != batches
    assert take(batch_indices(lengths, 8, seed=1, shuffle=False), 1) == [list(range(8))]


def test_bucketing_groups_similar_lengths_deterministically():
    lengths = [(i * 37) % 101 for i in range(96)]
    plain = take(batch_indices(lengths, 8, seed=0), 12)
    bucketed = take(batch_indices(lengths, 8, seed=0, bucketing=True), 12)
    assert sorted(i for b in bucketed for i in b) == list(range(96))

    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)

    assert spread(bucketed) < spread(plain) / 3
    assert take(batch_indices(lengths, 8, seed=0, bucketing=True), 12) == bucketed
