"""Per-format reading options, as a mapping file's `csv:`, `excel:` and `json:` sections give them.

Plain data with no I/O imports, so the pure core (mapping.py) can hold them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CsvOptions:
    delimiter: str | None = None  # None: sniffed from the first lines
    encoding: str = "utf-8"  # a UTF-8 BOM is tolerated (and stripped) whatever this says
    quotechar: str = '"'


@dataclass(frozen=True, slots=True)
class ExcelOptions:
    sheet: str | int | None = None  # sheet name, or 0-based index; None: the first sheet
    header_row: int = 1  # 1-based, as a spreadsheet program numbers rows


@dataclass(frozen=True, slots=True)
class JsonOptions:
    records: str | None = None  # dotted path to the array of objects; None: the top-level array
