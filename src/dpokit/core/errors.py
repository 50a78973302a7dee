"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class DpokitError(Exception):
    """Base class: anything dpokit raises on purpose."""


class ConfigError(DpokitError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class DataError(DpokitError):
    """A data record is unusable. Carries where it is (file, 1-based line), which field is at fault, and optionally
    how to go on (`hint`, appended to the message after the reason)."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None,
                 hint: str | None = None):
        self.reason = message
        self.source = source
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.source or "<data>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field is not None:
            where += f": field '{self.field}'"
        return f"{where}: {self.reason}" + (f"; {self.hint}" if self.hint else "")
