"""The shape every reader shares: a context-managed, single-pass stream of ``SourceRow``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal

from importer.errors import InputFileError
from importer.readers.base import SourceRow

SourceKind = Literal["csv", "excel", "json"]


class RowSource(ABC):
    """An open file, read as rows. Iterate once; rows are read as they are asked for.

    ``headers`` is the list of column names for CSV and Excel (known before any row) and
    ``None`` for JSON, whose field names are only known record by record.
    """

    kind: ClassVar[SourceKind]
    path: Path
    headers: list[str] | None

    @abstractmethod
    def __iter__(self) -> Iterator[SourceRow]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> RowSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def cannot_open(self, exc: OSError) -> InputFileError:
        """A file that cannot even be opened, with what to do about it."""
        if isinstance(exc, PermissionError):
            return self.refuse(
                "cannot be read: permission denied. Make it readable for the importer's user or group "
                "(e.g. chmod g+r) and drop it again."
            )
        if isinstance(exc, FileNotFoundError):
            return self.refuse(
                "disappeared before it could be read (moved or deleted by someone else meanwhile); "
                "drop it again."
            )
        if isinstance(exc, IsADirectoryError):
            return self.refuse("is a folder, not a file.")
        return self.refuse(f"cannot be opened: {exc.strerror or exc}; check the file and drop it again.")

    def refuse(self, message: str, **context: object) -> InputFileError:
        """An ``InputFileError`` for this file; ``message`` follows the file name."""
        return InputFileError(f"{self.path.name}: {message}", file=str(self.path), **context)


@dataclass(frozen=True, slots=True)
class HeaderLayout:
    """Which cell positions carry a named column.

    Empty header cells before the first and after the last named column are tolerated (a
    table that starts in column C, a trailing delimiter on the header line); their cells are
    expected to stay empty. An empty header between named columns refuses the file.
    """

    names: list[str]
    positions: list[int]  # positions[i] is the cell index of names[i]

    @property
    def _contiguous(self) -> bool:
        """The usual table: named columns from the first cell on, without gaps."""
        return self.positions[0] == 0 and self.positions[-1] == len(self.positions) - 1

    def row_values(self, cells: list[str]) -> dict[str, str]:
        # Fewer cells than headers: the missing ones are "". Spreadsheet programs drop
        # trailing empty cells when they save CSV, so a short row is normal, not a problem.
        width = len(cells)
        if width == len(self.names) and self._contiguous:
            return dict(zip(self.names, cells, strict=True))  # the usual row, at C speed
        return {
            name: cells[p] if p < width else "" for name, p in zip(self.names, self.positions, strict=True)
        }

    def stray_cells(self, cells: list[str]) -> list[int]:
        """Positions of non-empty cells that belong to no named column."""
        first, last = self.positions[0], self.positions[-1]
        if first == 0 and len(cells) <= last + 1:
            return []  # no cell outside the named columns (the usual row)
        return [i for i, v in enumerate(cells) if v != "" and (i < first or i > last)]


def oversize_cell_problem(values: dict[str, str], max_chars: int) -> str | None:
    """The first value longer than the cell limit, named, or None."""
    if not values or max(map(len, values.values())) <= max_chars:
        return None  # the usual row: every value checked at C speed
    for name, value in values.items():
        if len(value) > max_chars:
            return (
                f"{name!r} holds {len(value):,} characters, more than the cell limit of {max_chars:,} "
                "([limits] max_cell_chars): shorten the value, or raise the limit"
            )
    return None


def clean_header(text: str) -> str:
    # A BOM is removed wherever it shows up: a file re-saved by tools that each added one.
    return text.replace("\ufeff", "").strip()


def header_layout(raw: list[str], label: str) -> tuple[HeaderLayout | None, str | None]:
    """Validate a header row. Returns the layout, or ``None`` and what is wrong with it.

    ``label`` is ``"excel"`` (columns named by letter) or ``"csv"`` (by position).
    """
    names = [clean_header(h) for h in raw]
    named = [i for i, n in enumerate(names) if n]
    if not named:
        return None, "the header row is empty"
    first, last = named[0], named[-1]
    gaps = [i for i in range(first, last + 1) if not names[i]]
    if gaps:
        where = ", ".join(column_name(i, label) for i in gaps)
        return None, f"the header row has no name for {where}: give every column a name"
    seen: dict[str, int] = {}
    duplicates: list[str] = []
    for i in named:
        if names[i] in seen and names[i] not in duplicates:
            duplicates.append(names[i])
        seen.setdefault(names[i], i)
    if duplicates:
        listed = ", ".join(f'"{d}"' for d in duplicates)
        return None, f"the header row names {listed} more than once: make every column name unique"
    return HeaderLayout([names[i] for i in named], named), None


def column_name(index: int, label: str) -> str:
    """0-based cell index as a person would name the column: "column C" or "column 3"."""
    if label != "excel":
        return f"column {index + 1}"
    letters = ""
    n = index + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return f"column {letters}"


def stray_cells_problem(number: int, stray: list[int], layout: HeaderLayout, label: str) -> str:
    if label == "excel":
        where = ", ".join(column_name(i, label) for i in stray)
        return f"row {number} has values in {where}, outside the {len(layout.names)} columns with a header"
    return f"row {number} has {stray[-1] + 1} cells but the header has {len(layout.names)} columns"
