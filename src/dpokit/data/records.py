"""The normalised record every data format is turned into, before tokenization."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One preference record as plain text.

    Attributes:
        prompt: the text the responses continue (chat templates already rendered).
        responses: the candidate responses in preference order, best first. Two for a pair
            (chosen, rejected), K >= 2 for a ranked list, one for an unpaired (KTO) record.
        label: unpaired records only: True if the single response is desirable.
        source: file (or dataset name) the record came from.
        line: 1-based line of a JSONL file, or 1-based row/item index for other sources.
    """

    prompt: str
    responses: tuple[str, ...]
    label: bool | None = None
    source: str = ""
    line: int = 0

    @property
    def chosen(self) -> str:
        return self.responses[0]

    @property
    def rejected(self) -> str:
        return self.responses[-1]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"
