"""How tightly packed rows fit the real tokens: rows × width over the real tokens, at row_length alone (the old rule)
and at the tightest capacity (`data.packing._tightest`, what `pack` does now), on the same HH batches in one run.

The backbone computes every cell of the (R, L) rows, padding included, and attention grows with R·L²: both figures
are printed per setting, old and new side by side. Data only (no model): a few seconds.

    python benchmarks/packing_density.py                       # SmolLM2's tokenizer, 1,024 HH pairs
    python benchmarks/packing_density.py --max-length 1024 --batch-size 8 16 32
"""

from __future__ import annotations

import argparse

from fixture import data_path

from dpokit.data.batching import Layout, batches
from dpokit.data.config import DataConfig
from dpokit.data.packing import _bin, _units
from dpokit.data.prepare import Wants, prepare
from dpokit.models.loading import load_tokenizer


def old_rows(examples, row_length: int) -> tuple[int, int]:
    """(rows, width) of first-fit decreasing at capacity max(longest unit, row_length): the rule before."""
    units = _units(examples, [ex.response_ids for ex in examples], shared_prompt=True)
    rows = _bin(units, max(max(map(len, units)), row_length))
    return len(rows), max(sum(map(len, row)) for row in rows)


def measure(examples, pad_id: int, max_length: int, batch_size: int) -> str:
    real = old_cells = new_cells = old_att = new_att = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        packed = next(batches(chunk, batch_size, pad_id, False, layout=Layout(True, True, max_length)))
        r, w = packed.input_ids.shape
        o_r, o_w = old_rows(chunk, max_length)
        real += packed.num_real_tokens
        new_cells, new_att = new_cells + r * w, new_att + r * w * w
        old_cells, old_att = old_cells + o_r * o_w, old_att + o_r * o_w * o_w
    return (f"max_length {max_length:5d} batch {batch_size:3d}: cells / real tokens {old_cells / real:.3f} -> "
            f"{new_cells / real:.3f} ({old_cells / new_cells:.2f}x fewer cells), attention cells "
            f"{old_att / new_att:.2f}x fewer")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="whose tokenizer")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--max-length", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8, 32])
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    for max_length in args.max_length:
        data = DataConfig(path=str(data_path()), max_length=max_length, on_bad_record="skip", limit=args.pairs,
                          cache=False)
        store = prepare(data, tokenizer, Wants("sigmoid"), seed=0).train
        examples = [store[i] for i in range(len(store))]
        for batch_size in args.batch_size:
            print(measure(examples, tokenizer.pad_token_id, max_length, batch_size), flush=True)


if __name__ == "__main__":
    main()
