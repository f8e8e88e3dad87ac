"""What every reader yields: rows of (row number as a person sees it, {header: text})."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceRow:
    # CSV/Excel: the row number a spreadsheet program shows (header on row 1 -> first data row 2).
    # JSON: the 1-based position in the records array.
    number: int
    # header -> text. Every value is a str; an empty cell is "". Nested JSON fields are dotted.
    values: dict[str, str]
    # Set when the reader could not read the row faithfully (e.g. more cells than headers);
    # the row is then recorded as invalid with this message and never sent.
    problem: str | None = None
