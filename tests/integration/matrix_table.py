"""The option × backend matrix as a Markdown table, from the log a by-hand run writes:

    DPOKIT_MATRIX_LOG=/tmp/matrix.jsonl .venv/bin/python -m pytest -m '' tests/integration/test_matrix.py
    .venv/bin/python tests/integration/matrix_table.py /tmp/matrix.jsonl

One row per command and options, one column per backend; a cell reads "trains" (equal to one process) or the number
of its refusal reason, listed under the table. A cell missing from the log (it failed, or was not run) reads "—".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_matrix import BACKENDS, cell_id, cells  # noqa: E402


def table(log: Path) -> str:
    outcomes = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        outcomes[entry["cell"]] = entry["outcome"]
    reasons: dict[str, int] = {}
    rows: dict[tuple, dict[str, str]] = {}
    for cell in cells():
        command, backend, lora, mode, pack, loss = cell
        outcome = outcomes.get(cell_id(cell))
        if outcome is None:
            mark = "—"
        elif outcome == "trains":
            mark = "trains"
        else:
            reason = outcome.removeprefix("refused: ").split("dpokit: error:")[0].strip()  # ranks' lines ran together
            mark = f"refused ({reasons.setdefault(reason, len(reasons) + 1)})"
        rows.setdefault((command, lora, mode, pack, loss), {})[backend] = mark
    lines = ["| command | LoRA | reference.mode | packing | loss | " + " | ".join(BACKENDS) + " |",
             "|---" * (5 + len(BACKENDS)) + "|"]
    for (command, lora, mode, pack, loss), marks in rows.items():
        lines.append(f"| {command} | {'yes' if lora else 'no'} | {mode or ''} | {'on' if pack else 'off'} | "
                     f"{f'`{loss}`' if loss else ''} | " + " | ".join(marks.get(b, "—") for b in BACKENDS) + " |")
    lines.append("")
    lines += [f"{n}. {reason}" for reason, n in reasons.items()]
    counts = {}
    for outcome in outcomes.values():
        key = "trains" if outcome == "trains" else "refused"
        counts[key] = counts.get(key, 0) + 1
    lines.append("")
    lines.append(f"{len(outcomes)} of {len(cells())} cells logged: {counts.get('trains', 0)} train and match, "
                 f"{counts.get('refused', 0)} refused before any load.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
