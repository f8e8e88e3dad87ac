"""Excel .xlsx/.xlsm workbooks, a sheet streamed row by row (``xlsx_package``).

What a cell becomes is ``excel_text.cell_text``: text stays text, numbers carry no ``.0``
artefact, a number formatted ``000000`` keeps its leading zeros, dates are ``yyyy-MM-dd``
(with `` HH:mm:ss`` when they carry a time), booleans are ``TRUE``/``FALSE`` as Excel shows
them, formulas by their cached value, error cells by their error text. Before anything is
unpacked the archive is checked against the read limits (compression bombs, total size).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

from defusedxml import DefusedXmlException

from importer.readers._source import (
    HeaderLayout,
    RowSource,
    header_layout,
    oversize_cell_problem,
    stray_cells_problem,
)
from importer.readers.base import SourceRow
from importer.readers.excel_text import cell_text, number_text
from importer.readers.options import ExcelOptions, ReadLimits
from importer.readers.xlsx_package import Sheet, Workbook

__all__ = ["ExcelSource", "cell_text", "number_text"]

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
            # A file that is not a workbook fails in many ways (BadZipFile, KeyError for a
            # missing part, XML parse errors, ValueError...): all mean "corrupt".
            self._workbook = Workbook(path)
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
            self._rows = self._workbook.rows(self._sheet, min_row=options.header_row)
            self._number = options.header_row - 1  # the sheet row number of the row last read
            self._layout = self._read_header(options.header_row)
            self.headers: list[str] | None = list(self._layout.names)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        rows = getattr(self, "_rows", None)
        if rows is not None:
            rows.close()  # the sheet part first, then the archive
        self._workbook.close()

    def __iter__(self) -> Iterator[SourceRow]:
        layout = self._layout
        # The checks below look at every cell of every row; these bounds let a row skip them
        # when, as in almost every row, it cannot fail them.
        all_named = layout.positions[0] == 0
        named_width = layout.positions[-1] + 1
        max_chars = self._limits.max_cell_chars
        while (texts := self._next_row()) is not None:
            if not any(texts):
                continue  # fully empty rows are skipped; numbering keeps the sheet's rows
            problem = None
            if not (all_named and len(texts) <= named_width) and (stray := layout.stray_cells(texts)):
                problem = stray_cells_problem(self._number, stray, layout, "excel")
            values = layout.row_values(texts)
            if (
                problem is None
                and max(map(len, texts)) > max_chars
                and (too_long := oversize_cell_problem(values, max_chars))
            ):
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

    def _choose_sheet(self, wanted: str | int | None) -> Sheet:
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
        if self._number != header_row:
            raw = []  # the sheet stores no row header_row: the first one read is further down
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
            for number, cells in self._workbook.rows(self._sheet):
                if any(cells):
                    first = first or number
                    last = number
        except Exception as exc:
            raise self.refuse(
                f"is not a readable .xlsx workbook ({_describe(exc)}); {CORRUPT_HINT}."
            ) from exc
        return (first, last) if last else None

    def _next_row(self) -> list[str] | None:
        try:
            number, cells = next(self._rows)
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
        self._number = number
        return cells


def _defused_cause(exc: BaseException) -> BaseException | None:
    """The DTD refusal (defusedxml's exception class), if it is what ended the reading."""
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
