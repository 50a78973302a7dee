"""Progress for a person: a live bar on a terminal, a few plain lines (or nothing) in a log file.

`make demo > log` would otherwise fill the file with a tqdm redraw (a `\\r` frame) for every step. Both kinds take
the same calls, so the loop does not ask where stderr goes:

    bar = progress(range(first, total), total, every=10)
    for step in bar:           # 0-based steps
        ...
        bar.set_postfix(loss="0.6931")
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
MAX_LINES = 20  # plain lines per run, about: one every 5% of the steps at least


def progress(steps: range, total: int, every: int = 1, enabled: bool = True, desc: str = "train",
             stream: TextIO | None = None) -> tqdm | Lines:
    """A tqdm bar over `steps` when `stream` (default stderr) is a terminal; otherwise plain `Lines`.

    Args:
        steps: the 0-based steps still to run (a resumed run starts past 0).
        total: steps of the whole run.
        every: a plain line every this many steps at least (e.g. train.log_every); widened so a run prints about
            `MAX_LINES` lines, plus one at the last step.
        enabled: False: show nothing (still iterates `steps`).
        desc: what the bar or line is about.
        stream: where to write; stderr if None.
    """
    stream = stream or sys.stderr
    if enabled and _is_terminal(stream):
        return tqdm(steps, desc=desc, dynamic_ncols=True, initial=steps.start, total=total, file=stream)
    return Lines(steps, total, max(every, math.ceil(total / MAX_LINES)), desc, stream if enabled else None)


class Lines:
    """Progress as plain lines, `train 40/200 (20%) loss=0.6931 acc=0.50 [12 s]`, after every `every`-th step and
    the last one; the values are the latest `set_postfix` ones."""

    def __init__(self, steps: range, total: int, every: int, desc: str, stream: TextIO | None) -> None:
        self.steps, self.total, self.every, self.desc, self.stream = steps, total, every, desc, stream
        self.postfix: dict[str, object] = {}

    def set_postfix(self, **values: object) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator[int]:
        start = time.perf_counter()
        for step in self.steps:
            yield step
            done = step + 1
            if done % self.every == 0 or done == self.total:
                self._line(done, time.perf_counter() - start)

    def _line(self, done: int, seconds: float) -> None:
        if self.stream is None:
            return
        values = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc} {done}/{self.total} ({100 * done // self.total}%){values} [{seconds:.0f} s]",
              file=self.stream, flush=True)


def transient(items: Iterable[T], desc: str, enabled: bool = True, total: int | None = None) -> Iterable[T]:
    """A short-lived bar (tokenizing, sampling, reference log-probs) that disappears when done: on a terminal only,
    so a log file gets none of its redraws."""
    return tqdm(items, desc=desc, total=total, leave=False, disable=not (enabled and _is_terminal(sys.stderr)))


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def say(message: str) -> None:
    """A message for the person running the job, on stderr, between progress-bar redraws."""
    tqdm.write(message, file=sys.stderr)


def report(message: str) -> None:
    """A line of a report printed as the run goes (the frontier's and the demos' tables), on stdout, between
    progress-bar redraws."""
    tqdm.write(message)
