"""Excel .xlsx/.xlsm workbooks, read as a stream with openpyxl's read-only reader.

Why openpyxl rather than python-calamine (tests/bench/test_reader_speed.py, 100,000 rows x
10 columns): calamine read ~41,600 rows/s against openpyxl's ~4,500 (9x), but it reports
error cells (``#N/A``) as empty cells, and it loads the whole sheet before the first row (+75 MB
RSS for that sheet, against +0.3 MB for openpyxl's read-only mode, which streams the sheet's
XML). Each of those breaks a promise (error text; memory bounded by what the caller holds), so speed does
not decide it. Two known costs: the workbook's shared-strings table is held whole (any reader
must), and openpyxl's parser keeps an empty element per row read (~150 bytes a row).

Values follow the product's promise: text stays text, numbers carry no ``.0`` artefact,
dates are ``yyyy-MM-dd`` (with `` HH:mm:ss`` when they carry a time), booleans are
``TRUE``/``FALSE`` as Excel shows them, formulas by their cached value, error cells by their
error text.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
from defusedxml import DefusedXmlException

from importer.readers._source import (
    HeaderLayout,
    RowSource,
    header_layout,
    oversize_cell_problem,
    stray_cells_problem,
)
from importer.readers.base import SourceRow
from importer.readers.options import ExcelOptions, ReadLimits

OLE_MAGIC = bytes.fromhex("d0cf11e0a1b11ae1")  # an OLE2 compound file: encrypted .xlsx or old .xls
RATIO_CHECK_BYTES = 10 * 1024 * 1024  # parts smaller than this may compress as well as they like
CORRUPT_HINT = "open it in Excel and save it again as .xlsx (a password-protected workbook cannot be read)"


class ExcelSource(RowSource):
    kind = "excel"

    def __init__(
        self,
        path: Path,
        options: ExcelOptions,
        limits: ReadLimits = ReadLimits(),  # noqa: B008
    ) -> None:
        self.path = path
        self._limits = limits
        if options.header_row < 1:
            raise self.refuse(
                f"the mapping's excel header_row is {options.header_row}: rows are numbered from 1."
            )
        self._check_archive()
        try:
            # openpyxl raises a zoo of exceptions for files that are not workbooks (BadZipFile,
            # KeyError for a missing part, XML parse errors, ValueError...): all mean "corrupt".
            self._workbook = openpyxl.load_workbook(path, read_only=True, data_only=True, keep_links=False)
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        except Exception as exc:
            if (defused := _defused_cause(exc)) is not None:
                raise self._entities_refused(defused) from exc
            raise self.refuse(
                f"is not a readable .xlsx workbook ({_describe(exc)}); {CORRUPT_HINT}."
            ) from exc
        try:
            self._sheet = self._choose_sheet(options.sheet)
            self.sheet_name: str = self._sheet.title
            # The <dimension> a workbook declares can be wrong (some generators write "A1"):
            # forget it so every row is read, at the price of rows of uneven length.
            self._sheet.reset_dimensions()
            _skip_empty_rows_unparsed(self._sheet)
            # Cells, not bare values: a number's format can carry leading zeros (see cell_text).
            self._rows = self._sheet.iter_rows(min_row=options.header_row)
            self._number = options.header_row - 1  # the sheet row number of the row last read
            self._layout = self._read_header(options.header_row)
            self.headers: list[str] | None = list(self._layout.names)
        except BaseException:
            self._workbook.close()
            raise

    def close(self) -> None:
        self._workbook.close()

    def __iter__(self) -> Iterator[SourceRow]:
        layout = self._layout
        while (texts := self._next_row()) is not None:
            if not any(texts):
                continue  # fully empty rows are skipped; numbering keeps the sheet's rows
            problem = None
            if stray := layout.stray_cells(texts):
                problem = stray_cells_problem(self._number, stray, layout, "excel")
            values = layout.row_values(texts)
            if problem is None and (too_long := oversize_cell_problem(values, self._limits.max_cell_chars)):
                yield SourceRow(self._number, {}, f"row {self._number}: {too_long}")
                continue
            yield SourceRow(self._number, values, problem)

    # -- before anything is unpacked ---------------------------------------------------------

    def _check_archive(self) -> None:
        """Refuse, unread, what is not a workbook or would unpack to far more than it weighs.

        The sizes come from the zip directory; a part that inflates past its declared size fails
        its CRC check when read, so they bound what parsing can unpack."""
        try:
            with open(self.path, "rb") as f:
                magic = f.read(8)
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        if magic.startswith(OLE_MAGIC):
            raise self.refuse(
                "is a password-protected (encrypted) workbook or an old .xls saved as .xlsx, which "
                "cannot be read: open it in Excel, remove the password (File > Info > Protect "
                "Workbook) or save it as .xlsx, and drop it again."
            )
        try:
            with zipfile.ZipFile(self.path) as archive:
                parts = archive.infolist()
        except Exception as exc:  # BadZipFile, NotImplementedError (a "version 7.3" zip), EOFError...
            looks_like_text = magic and all(32 <= b < 127 or b in b"\t\r\n" for b in magic)
            hint = (
                "it looks like text: a CSV file renamed .xlsx? Name it .csv, or open it in Excel and "
                "save it again as .xlsx"
                if looks_like_text
                else CORRUPT_HINT
            )
            raise self.refuse(
                f"is not a readable .xlsx workbook (not a zip archive: {exc}); {hint}."
            ) from exc
        for part in parts:
            if part.file_size > RATIO_CHECK_BYTES and part.file_size > self._limits.xlsx_max_ratio * max(
                part.compress_size, 1
            ):
                raise self.refuse(
                    f"part {part.filename} inflates {part.file_size // max(part.compress_size, 1):,} "
                    f"times ({part.compress_size:,} -> {part.file_size:,} bytes), more than "
                    f"{self._limits.xlsx_max_ratio} ([limits] xlsx_max_ratio): a compression bomb, "
                    "not a spreadsheet; it was not read."
                )
        limit = self._limits.xlsx_max_uncompressed_mb * 1024 * 1024
        total = sum(p.file_size for p in parts)
        if total > limit:
            raise self.refuse(
                f"unpacks to {total / 1024 / 1024:,.0f} MB, more than the limit of "
                f"{self._limits.xlsx_max_uncompressed_mb:,} MB ([limits] xlsx_max_uncompressed_mb); "
                "it was not read. Split the workbook, or raise the limit if it is genuine."
            )

    def _entities_refused(self, exc: BaseException) -> Exception:
        return self.refuse(
            f"declares XML entities or a DTD ({type(exc).__name__}), which workbooks never need and "
            'entity-expansion attacks ("billion laughs") use; it was not read. Save it again from '
            "Excel, and drop it again."
        )

    def _choose_sheet(self, wanted: str | int | None) -> Any:
        worksheets = self._workbook.worksheets  # chart sheets hold no rows, so they are left out
        names = [ws.title for ws in worksheets]
        listed = ", ".join(f'"{n}"' for n in names)
        if not worksheets:
            raise self.refuse("the workbook has no worksheet.")
        if wanted is None:
            return worksheets[0]
        if isinstance(wanted, int):
            if 0 <= wanted < len(worksheets):
                return worksheets[wanted]
            raise self.refuse(
                f"the mapping asks for sheet index {wanted} (0-based) but the workbook has "
                f"{len(worksheets)} sheet(s): {listed}."
            )
        for ws, name in zip(worksheets, names, strict=True):
            if name == wanted:
                return ws
        for ws, name in zip(worksheets, names, strict=True):
            if name.strip().casefold() == wanted.strip().casefold():
                return ws  # "employees " and "Employees" are the same sheet to a person
        raise self.refuse(f'has no sheet "{wanted}"; its sheets are: {listed}. Fix excel: {{sheet: ...}}.')

    def _read_header(self, header_row: int) -> HeaderLayout:
        raw = self._next_row() or []
        if not any(raw):
            filled = self._first_and_last_filled_rows()
            if filled is None:
                raise self.refuse(f'sheet "{self.sheet_name}" is empty: there is no header row.')
            first, last = filled
            if header_row > last:
                raise self.refuse(
                    f"the mapping's excel header_row {header_row} is beyond the last row ({last}) "
                    f'of sheet "{self.sheet_name}".'
                )
            raise self.refuse(
                f'row {header_row} of sheet "{self.sheet_name}" is empty (the first row with content '
                f"is {first}): set excel: {{header_row: N}} in the mapping to the row of column names."
            )
        layout, wrong = header_layout(raw, "excel")
        if layout is None:
            raise self.refuse(f'{wrong} (sheet "{self.sheet_name}", row {header_row}).')
        return layout

    def _first_and_last_filled_rows(self) -> tuple[int, int] | None:
        """Only to explain a missing header: a second pass over the sheet."""
        first = last = 0
        try:
            for number, cells in enumerate(self._sheet.iter_rows(values_only=True), start=1):
                if any(cell_text(v) for v in cells):
                    first = first or number
                    last = number
        except Exception as exc:
            raise self.refuse(
                f"is not a readable .xlsx workbook ({_describe(exc)}); {CORRUPT_HINT}."
            ) from exc
        return (first, last) if last else None

    def _next_row(self) -> list[str] | None:
        try:
            cells = [cell_text(c.value, getattr(c, "number_format", None)) for c in next(self._rows)]
        except StopIteration:
            return None
        except Exception as exc:  # a damaged sheet part: XML errors, bad cell references
            if (defused := _defused_cause(exc)) is not None:
                raise self._entities_refused(defused) from exc
            raise self.refuse(
                f'sheet "{self.sheet_name}" is damaged after row {self._number} ({_describe(exc)}); '
                f"{CORRUPT_HINT}.",
                row=self._number + 1,
            ) from exc
        self._number += 1
        return cells


_ZERO_PADDED = re.compile(r"^0+$")
# A row with no cell, or only cells without a value (<c r="A7" s="3"/>): what a sheet formatted
# down to row 1,048,576 holds. Removed from the sheet's XML before openpyxl parses it, at the
# speed of a regular expression: openpyxl would build (and keep) an element for each of them.
_EMPTY_ROW = re.compile(rb"<row\b[^>]*/>|<row\b[^>]*>(?:\s*<c\b[^>]*/>)*\s*</row>")
_FILTER_CHUNK = 16 * 1024  # what iterparse asks for at a time
_LONGEST_EMPTY_ROW = 16 * 1024


class _EmptyRowFilter:
    """A sheet part's byte stream without its empty rows (a file-like object for iterparse)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._pending = b""  # from the last "<row" on: may continue in the next chunk
        self._out = bytearray()
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._out) < size):
            chunk = self._raw.read(_FILTER_CHUNK)
            buffer = self._pending + chunk
            if not chunk:
                self._eof = True
                cut = len(buffer)
            else:
                cut = buffer.rfind(b"<row")
                if cut < 0 or len(buffer) - cut > _LONGEST_EMPTY_ROW:
                    cut = len(buffer)
            self._out += _EMPTY_ROW.sub(b"", buffer[:cut])
            self._pending = buffer[cut:]
        if size < 0:
            size = len(self._out)
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _EmptyRowFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _skip_empty_rows_unparsed(sheet: Any) -> None:
    """Make a read-only worksheet read its XML through ``_EmptyRowFilter``. ``_get_source`` is
    openpyxl's (private) hook for opening the part; without it, rows are read unfiltered."""
    original = getattr(sheet, "_get_source", None)
    if callable(original):
        sheet._get_source = lambda: _EmptyRowFilter(original())


def cell_text(value: object, number_format: str | None = None) -> str:
    """A cell's value as the text the import sends (see the module docstring).

    A whole number formatted ``000000`` shows as ``000123`` in Excel — the usual way HR sheets
    keep employee numbers — and is sent as shown, leading zeros included.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value  # text cells, and error cells (openpyxl gives their text, e.g. "#N/A")
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if (
        isinstance(value, int | float)
        and number_format
        and _ZERO_PADDED.match(number_format)
        and float(value).is_integer()
        and value >= 0
    ):
        return str(int(value)).zfill(len(number_format))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, dt.datetime):
        value = _round_to_second(value)
        if value.time() == dt.time(0, 0):
            return value.strftime("%Y-%m-%d")  # a date cell is a datetime at midnight
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, dt.time):
        moment = _round_to_second(dt.datetime.combine(dt.date(2000, 1, 1), value))
        return moment.strftime("%H:%M:%S")
    if isinstance(value, dt.timedelta):  # a duration format such as [h]:mm:ss
        seconds = round(value.total_seconds())
        sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
        hours, rest = divmod(seconds, 3600)
        return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return str(value)


def number_text(value: float) -> str:
    """A number as Excel's General format would show it, without its 15-digit rounding.

    Integral values lose the ``.0``; others use the shortest text that reads back as the same
    float (``0.1``, not ``0.1000000000000000055``); ordinary magnitudes (1e-7 to 1e21, the
    range JavaScript also writes in plain digits) never use scientific notation.
    """
    if value != value or value in (float("inf"), float("-inf")):
        return repr(value)
    magnitude = abs(value)
    if value.is_integer() and magnitude < 1e21:
        return str(int(value))
    if 1e-7 <= magnitude < 1e21:
        return format(Decimal(repr(value)), "f")
    return repr(value)


def _round_to_second(moment: dt.datetime) -> dt.datetime:
    # Excel stores times as fractions of a day; 13:45:07 may come back as 13:45:06.999999.
    if moment.microsecond >= 500_000:
        moment += dt.timedelta(seconds=1)
    return moment.replace(microsecond=0)


def _defused_cause(exc: BaseException) -> BaseException | None:
    """defusedxml's refusal, if it is what (perhaps wrapped by openpyxl) ended the reading."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, DefusedXmlException):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
