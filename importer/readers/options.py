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


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """What one input may cost, whatever its content (``[limits]`` in importer.toml)."""

    max_cell_chars: int = 32_767  # Excel's own limit for a cell; a longer cell makes its row invalid
    max_json_depth: int = 32  # objects/arrays nested deeper make the record invalid
    max_number_digits: int = 40  # a JSON number with more digits than this (40: a staging string column)
    xlsx_max_uncompressed_mb: int = 1024  # a workbook unpacking to more than this is refused unread
    xlsx_max_ratio: int = 100  # a part inflating more than this (and past 10 MB) is a zip bomb
    reader_memory_mb: int = 1024  # the reading process's address-space limit (RLIMIT_AS)
    read_stall_s: float = 120.0  # no row for this long: the reading process is abandoned
    pattern_timeout_s: float = 0.25  # one mapping pattern against one cell

    @property
    def csv_field_limit(self) -> int:
        """The csv module's own limit: well above the cell limit, so that a long cell is one
        invalid row while a runaway quoted field still ends the file in bounded memory."""
        return max(self.max_cell_chars * 4, 1_000_000)
