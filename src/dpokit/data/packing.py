"""Padding-free batches: sequences packed into few rows, the prompt of each example computed once.

The plain layout (`collate.py`) pads B*K rows of `prompt + response_k` to the longest row. Here an example becomes
one *unit* `[prompt, response_1, ..., response_K]` (shared prompt) or K units `[prompt, response_k]` (packing only);
units are packed first-fit-decreasing into rows. Attention is confined by a 4D boolean mask: a token sees earlier
tokens of its own unit that are in the prompt or in its own response, never another response or another unit.
Positions restart per unit and each response continues from the prompt's last position, so every response token
gets exactly the context, position and therefore log-prob it has in the plain layout (tests check this).

>>> ex = TokenizedExample(index=3, prompt_ids=(5, 6), response_ids=((7, 0), (8, 9, 0)))
>>> b = pack([ex], pad_id=1, shared_prompt=True, packing=True)
>>> b.input_ids.tolist(), b.position_ids.tolist()
([[5, 6, 7, 0, 8, 9, 0]], [[0, 1, 2, 3, 2, 3, 4]])
>>> b.pred_cols.tolist(), b.targets.tolist()  # the last prompt token predicts both responses' first token
([1, 2, 1, 4, 5], [7, 0, 8, 9, 0])
>>> b.token_cols.tolist()  # each response token's own column (a reward model reads the last one's hidden state)
[2, 3, 4, 5, 6]
>>> b.attention_mask[0, 0, 4].int().tolist()  # response 2's first token: the prompt and itself
[1, 1, 0, 0, 1, 0, 0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dpokit.data.tokenize import TokenizedExample


@dataclass
class PackedBatch:
    """A packed batch plus, for every response token, where its prediction comes from.

    M is the number of response tokens in the batch; rows R and width L are whatever packing produced.
    """

    input_ids: Tensor  # (R, L) long
    position_ids: Tensor  # (R, L) long, restarting per unit
    attention_mask: Tensor  # (R, 1, L, L) bool, True where a query position may attend a key position
    unit_ids: Tensor  # (R, L) long: the unit of each column, -1 on padding (the mask's ingredients, for mask_mod)
    segments: Tensor  # (R, L) long: 0 in a prompt, j + 1 in a unit's response j
    pred_rows: Tensor  # (M,) row of the hidden state that predicts each response token
    pred_cols: Tensor  # (M,) column of that hidden state
    targets: Tensor  # (M,) the response token ids
    seq_ids: Tensor  # (M,) b*K + k: the response each token belongs to
    token_pos: Tensor  # (M,) index of the token within its response
    token_cols: Tensor  # (M,) column of the token itself (its hidden state, read by a reward model's head)
    num_responses: int  # K
    indices: Tensor  # (B,) dataset indices (the reference cache key)
    labels: Tensor | None = None  # (B,) bool, unpaired (KTO) batches only
    num_real_tokens: int = field(default=0)  # non-pad tokens in the rows (what the forward really computes)
    num_sequence_tokens: int = field(default=0)  # Σ over responses of len(prompt + response), as the plain layout

    @property
    def num_examples(self) -> int:
        return self.indices.numel()

    @property
    def max_response_len(self) -> int:
        return int(self.token_pos.max()) + 1 if self.token_pos.numel() else 0

    def to(self, device: torch.device | str) -> PackedBatch:
        move = {k: v.to(device) if isinstance(v, Tensor) and k != "indices" else v for k, v in vars(self).items()}
        return PackedBatch(**move)


@dataclass(frozen=True)
class _Unit:
    example: int  # b
    first_response: int  # k of the unit's first response
    prompt: tuple[int, ...]
    responses: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(r) for r in self.responses)


def pack(
    examples: list[TokenizedExample],
    pad_id: int,
    *,
    shared_prompt: bool = True,
    packing: bool = True,
    unpaired: bool = False,
    row_length: int | None = None,
) -> PackedBatch:
    """Builds a padding-free batch.

    Args:
        examples: B examples with K responses each (K = 1 when `unpaired`).
        pad_id: id for the unused tail of each row.
        shared_prompt: one unit per example (prompt once) instead of one per response.
        packing: several units per row (first-fit decreasing) instead of one row per unit.
        unpaired: KTO layout: each example's second response is the next example's completion (see collate).
        row_length: row capacity when packing (default: the longest unit). Attention cost grows with it.
    """
    responses = _responses(examples, unpaired)
    k = len(responses[0])
    units = _units(examples, responses, shared_prompt)
    rows = _tightest(units, row_length) if packing else [[u] for u in units]
    grid = _Grid(len(rows), max(sum(map(len, row)) for row in rows), pad_id, k)
    for r, row in enumerate(rows):
        col = 0
        for u_index, unit in enumerate(row):
            col = grid.place(unit, r, col, u_index)
    pred = torch.tensor(grid.preds, dtype=torch.long).view(-1, 6)
    labels = torch.tensor([bool(ex.label) for ex in examples]) if unpaired else None
    return PackedBatch(
        input_ids=grid.ids,
        position_ids=grid.pos,
        attention_mask=dense_mask(grid.unit_id, grid.seg),
        unit_ids=grid.unit_id,
        segments=grid.seg,
        pred_rows=pred[:, 0],
        pred_cols=pred[:, 1],
        targets=pred[:, 2],
        seq_ids=pred[:, 3],
        token_pos=pred[:, 4],
        token_cols=pred[:, 5],
        num_responses=k,
        indices=torch.tensor([ex.index for ex in examples], dtype=torch.long),
        labels=labels,
        num_real_tokens=int((grid.unit_id >= 0).sum()),
        num_sequence_tokens=sum(len(ex.prompt_ids) * k + sum(map(len, r)) for ex, r in zip(examples, responses,
                                                                                             strict=True)),
    )


def _responses(examples: list[TokenizedExample], unpaired: bool) -> list[tuple[tuple[int, ...], ...]]:
    if unpaired:
        n = len(examples)
        return [(ex.response_ids[0], examples[(i + 1) % n].response_ids[0]) for i, ex in enumerate(examples)]
    k = len(examples[0].response_ids)
    if any(len(ex.response_ids) != k for ex in examples):
        raise ValueError("all examples in a batch must have the same number of responses")
    return [ex.response_ids for ex in examples]


def _units(examples, responses, shared_prompt: bool) -> list[_Unit]:
    if any(not ex.prompt_ids for ex in examples):  # tokenization gives every prompt at least a start token
        raise ValueError("packing needs a non-empty prompt: its last token predicts each response's first token")
    if shared_prompt:
        return [_Unit(b, 0, ex.prompt_ids, resp) for b, (ex, resp) in enumerate(zip(examples, responses, strict=True))]
    return [
        _Unit(b, k, ex.prompt_ids, (r,))
        for b, (ex, resp) in enumerate(zip(examples, responses, strict=True))
        for k, r in enumerate(resp)
    ]


def _tightest(units: list[_Unit], row_length: int | None) -> list[list[_Unit]]:
    """The first-fit-decreasing packing, over every capacity from `row_length` down to the longest unit, with the
    fewest cells (rows × width: what the backbone computes, padding included); among equals the narrowest (attention
    grows with the width squared).

    FFD at capacity c packs exactly as at any c' in [width(c), c], so only the capacities just below each packing's
    width need trying: a handful per batch. On HH pairs at max_length 1024, batch 8, rows at `row_length` alone hold
    1.28 cells per real token, the tightest 1.02 (benchmarks/packing_density.py; little changes at 256, where a
    batch's longest units already set the width).
    """
    longest = max(map(len, units))
    capacity = max(longest, row_length or 0)
    best, best_cost = None, None
    while capacity >= longest:
        rows = _bin(units, capacity)
        width = max(sum(map(len, row)) for row in rows)
        cost = (len(rows) * width, width)
        if best_cost is None or cost < best_cost:
            best, best_cost = rows, cost
        capacity = width - 1
    return best


def _bin(units: list[_Unit], capacity: int) -> list[list[_Unit]]:
    """First-fit decreasing: deterministic (ties keep batch order), rows of at most `capacity` tokens."""
    rows: list[list[_Unit]] = []
    fill: list[int] = []
    for unit in sorted(units, key=len, reverse=True):
        for r, used in enumerate(fill):
            if used + len(unit) <= capacity:
                rows[r].append(unit)
                fill[r] += len(unit)
                break
        else:
            rows.append([unit])
            fill.append(len(unit))
    return rows


class _Grid:
    """The rows being filled: token ids, positions, unit and segment of every column, and each response token's
    predictor as (row, col, target, seq id, token position, the token's own col)."""

    def __init__(self, rows: int, width: int, pad_id: int, k: int):
        self.ids = torch.full((rows, width), pad_id, dtype=torch.long)
        self.pos = torch.zeros((rows, width), dtype=torch.long)
        self.unit_id = torch.full((rows, width), -1, dtype=torch.long)  # -1: padding
        self.seg = torch.zeros((rows, width), dtype=torch.long)  # 0: prompt, j + 1: response j
        self.preds: list[tuple[int, int, int, int, int, int]] = []
        self.k = k

    def place(self, unit: _Unit, r: int, col: int, u_index: int) -> int:
        """Writes one unit into row r from column `col`; records each response token's predictor. Returns next col."""
        p = len(unit.prompt)
        self._write(r, col, unit.prompt, torch.arange(p), u_index, 0)
        last_prompt_col = col + p - 1
        col += p
        for j, resp in enumerate(unit.responses):
            self._write(r, col, resp, torch.arange(p, p + len(resp)), u_index, j + 1)
            seq = unit.example * self.k + unit.first_response + j
            for t, token in enumerate(resp):
                self.preds.append((r, last_prompt_col if t == 0 else col + t - 1, token, seq, t, col + t))
            col += len(resp)
        return col

    def _write(self, r: int, col: int, tokens: tuple[int, ...], positions: Tensor, unit: int, segment: int) -> None:
        end = col + len(tokens)
        self.ids[r, col:end] = torch.tensor(tokens, dtype=torch.long)
        self.pos[r, col:end] = positions
        self.unit_id[r, col:end] = unit
        self.seg[r, col:end] = segment


def dense_mask(unit_id: Tensor, seg: Tensor) -> Tensor:
    """(R, 1, L, L): causal, within a unit, keys in the prompt (segment 0) or the query's own segment.

    Padding positions attend only to themselves, so no attention row is empty (an empty row gives NaN).
    `lm.attention.packed_block_mask` states the same rule per (query, key) pair for FlexAttention.
    """
    width = unit_id.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_unit = unit_id[:, :, None] == unit_id[:, None, :]
    visible_seg = (seg[:, None, :] == 0) | (seg[:, :, None] == seg[:, None, :])
    real = (unit_id >= 0)[:, :, None]
    eye = torch.eye(width, dtype=torch.bool)
    return ((causal & same_unit & visible_seg & real) | (eye & ~real)).unsqueeze(1)
