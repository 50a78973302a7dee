"""Tokenized examples -> batches: plain padded rows (collate.py) or packed rows (packing.py), by one `Layout`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dpokit.data.collate import Batch, collate
from dpokit.data.packing import PackedBatch, pack
from dpokit.data.tokenize import TokenizedExample


@dataclass(frozen=True)
class Layout:
    """How tokenized examples become a batch: plain padded rows (all False), or packed (see data/packing.py)."""

    packing: bool = False
    shared_prompt: bool = False
    row_length: int | None = None

    @property
    def plain(self) -> bool:
        return not (self.packing or self.shared_prompt)

    def __call__(self, examples: list[TokenizedExample], pad_id: int, unpaired: bool) -> Batch | PackedBatch:
        if self.plain:
            return collate(examples, pad_id, unpaired)
        return pack(examples, pad_id, shared_prompt=self.shared_prompt, packing=self.packing, unpaired=unpaired,
                    row_length=self.row_length)


def batches(examples: list[TokenizedExample], batch_size: int, pad_id: int, unpaired: bool,
            order: list[int] | None = None, layout: Layout = Layout()) -> Iterator[Batch | PackedBatch]:
    """Batches of `batch_size` examples (the last may be smaller), in `order` or in dataset order."""
    order = list(range(len(examples))) if order is None else order
    for start in range(0, len(order), batch_size):
        yield layout([examples[i] for i in order[start:start + batch_size]], pad_id, unpaired)


PLAIN = Layout()  # padded rows: what every path falls back to
