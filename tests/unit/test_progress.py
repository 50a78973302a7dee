"""Training progress: a tqdm bar on a terminal; in a log file, a few plain lines without carriage returns."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from dpokit.core.progress import Lines, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(bar, losses: dict[int, float]) -> None:
    """What the training loop does with it."""
    for step in bar:
        bar.set_postfix(loss=f"{losses[step]:.4f}")


def test_a_log_file_gets_a_plain_line_every_n_steps_and_at_the_end():
    out = io.StringIO()
    run(progress(range(0, 10), 10, every=3, stream=out), {s: s / 10 for s in range(10)})
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        "train 3/10 (30%) loss=0.2000",
        "train 6/10 (60%) loss=0.5000",
        "train 9/10 (90%) loss=0.8000",
        "train 10/10 (100%) loss=0.9000",
    ]
    assert all(line.endswith(" s]") for line in lines)  # elapsed seconds


def test_a_long_run_prints_about_twenty_lines_and_a_resumed_one_counts_from_its_step():
    out = io.StringIO()
    run(progress(range(150, 1000), 1000, every=1, stream=out), {s: 0.5 for s in range(1000)})
    steps = [int(line.split()[1].split("/")[0]) for line in out.getvalue().splitlines()]
    assert steps == list(range(200, 1001, 50))  # every 5% of the whole run (1000 / 20), from where it resumed


def test_disabled_prints_nothing_but_still_runs_every_step():
    out = io.StringIO()
    seen = []
    bar = progress(range(0, 5), 5, stream=out, enabled=False)
    for step in bar:
        seen.append(step)
        bar.set_postfix(loss="1")
    assert seen == [0, 1, 2, 3, 4] and out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    bar = progress(range(2, 4), 4, stream=out)
    assert isinstance(bar, tqdm) and not isinstance(bar, Lines)
    run(bar, {2: 0.5, 3: 0.25})
    bar.close()
    assert "\r" in out.getvalue() and "4/4" in out.getvalue()
