"""CSV (and .txt/.tsv) files: read line by line, every cell kept as the text it is.

Row numbers are what a spreadsheet program shows: the header is row 1 and every record after
it is the next row, so a quoted field holding a newline does not shift the rows below it, and
a blank line is a row that yields nothing.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from importer.errors import InputFileError
from importer.readers._source import (
    HeaderLayout,
    RowSource,
    header_layout,
    oversize_cell_problem,
    stray_cells_problem,
)
from importer.readers.base import SourceRow
from importer.readers.options import CsvOptions, ReadLimits

SNIFF_BYTES = 16 * 1024
SNIFF_DELIMITERS = ",;\t|"
UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class CsvSource(RowSource):
    kind = "csv"

    def __init__(
        self,
        path: Path,
        options: CsvOptions,
        default_delimiter: str | None = None,
        limits: ReadLimits = ReadLimits(),  # noqa: B008
    ) -> None:
        self.path = path
        self._options = options
        self._limits = limits
        # Process-wide in the csv module; the reading process is the daemon's child (isolated.py).
        csv.field_size_limit(limits.csv_field_limit)
        self._encoding = self._choose_encoding(options.encoding)
        try:
            self._file: IO[str] = open(path, encoding=self._encoding, newline="", errors="strict")  # noqa: SIM115
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        try:
            self.delimiter = options.delimiter or default_delimiter or self._sniff_delimiter()
            try:
                reader = csv.reader(
                    self._file, delimiter=self.delimiter, quotechar=options.quotechar, strict=True
                )
            except TypeError as exc:
                raise self.refuse(
                    f"the mapping's csv options are not usable ({exc}): delimiter and quotechar "
                    "must each be a single character"
                ) from exc
            self._records = reader
            self._number = 0  # the row number of the record last read
            self._layout = self._read_header()
            self.headers: list[str] | None = list(self._layout.names)
        except BaseException:
            self._file.close()
            raise

    def close(self) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[SourceRow]:
        layout = self._layout
        while (record := self._next_record()) is not None:
            number = self._number
            if not any(record):
                continue  # a blank line (or only delimiters) is a row a spreadsheet shows empty
            problem = None
            if stray := layout.stray_cells(record):
                problem = stray_cells_problem(number, stray, layout, "csv")
            values = layout.row_values(record)
            if problem is None and (too_long := oversize_cell_problem(values, self._limits.max_cell_chars)):
                yield SourceRow(number, {}, f"row {number}: {too_long}")
                continue
            yield SourceRow(number, values, problem)

    # -- opening ---------------------------------------------------------------------------

    def _choose_encoding(self, declared: str) -> str:
        try:
            codec = codecs.lookup(declared)
        except LookupError as exc:
            raise self.refuse(
                f"the mapping's csv encoding {declared!r} is not a known encoding: use e.g. utf-8 or cp1252"
            ) from exc
        try:
            with open(self.path, "rb") as f:
                start = f.read(4)
        except OSError as exc:
            raise self.cannot_open(exc) from exc
        # A UTF-8 BOM says the file is UTF-8 whatever the mapping declares (Excel reads it the
        # same way); utf-8-sig strips it so it never reaches the first header.
        if codec.name == "utf-8" or start.startswith(UTF8_BOM):
            return "utf-8-sig"
        return declared

    def _sniff_delimiter(self) -> str:
        try:
            sample = self._file.read(SNIFF_BYTES)
        except UnicodeDecodeError as exc:
            raise self._decoding_error() from exc
        self._file.seek(0)
        if len(sample) == SNIFF_BYTES and "\n" in sample:
            sample = sample[: sample.rindex("\n")]  # whole lines only: a cut line misleads the sniffer
        try:
            return csv.Sniffer().sniff(sample, delimiters=SNIFF_DELIMITERS).delimiter
        except csv.Error:
            first_line = sample.split("\n", 1)[0]
            counts = {d: first_line.count(d) for d in SNIFF_DELIMITERS}
            best = max(counts, key=lambda d: counts[d])
            return best if counts[best] else ","

    def _read_header(self) -> HeaderLayout:
        while (record := self._next_record()) is not None:
            if not any(field.strip() for field in record):
                continue  # blank lines above the header are tolerated; numbering still counts them
            layout, wrong = header_layout(record, "csv")
            if layout is None:
                raise self.refuse(f"{wrong} (row {self._number}).")
            return layout
        raise self.refuse("the file is empty: there is no header row with the column names.")

    # -- reading ---------------------------------------------------------------------------

    def _next_record(self) -> list[str] | None:
        try:
            record = next(self._records)
        except StopIteration:
            return None
        except UnicodeDecodeError as exc:
            raise self._decoding_error() from exc
        except csv.Error as exc:
            raise self._csv_error(exc) from exc
        self._number += 1
        return record

    def _csv_error(self, exc: csv.Error) -> InputFileError:
        row = self._number + 1
        text = str(exc)
        if "field larger than field limit" in text and not self._file_has_quotechar():
            hint = (
                f"a cell on row {row} is longer than {self._limits.csv_field_limit:,} characters, "
                f"far beyond the cell limit of {self._limits.max_cell_chars:,} ([limits] max_cell_chars): "
                "check the delimiter (a file read with the wrong one is one long cell per line) "
                "or shorten the value"
            )
        elif "field larger than field limit" in text or "unexpected end of data" in text:
            hint = (
                f"a quoted field starting on row {row} is never closed: check the quotes "
                f"(a field holding {self._options.quotechar} must be quoted and the "
                f"{self._options.quotechar} doubled)"
            )
        elif "NUL" in text:
            hint = f"row {row} contains a NUL byte: this is not a text file, or it is UTF-16 (declare it)"
        else:
            hint = f"row {row} is not valid CSV ({text}): check the quotes on that row"
        return self.refuse(hint, row=row)

    def _decoding_error(self) -> InputFileError:
        line, offset, bad = locate_undecodable(self.path, self._encoding)
        shown = " ".join(f"0x{b:02x}" for b in bad) or "the bytes"
        if self._encoding == "utf-8-sig":
            hint = "if it was saved by Excel on Windows, set csv: {encoding: cp1252} in the mapping"
        else:
            hint = "set csv: {encoding: ...} in the mapping to the encoding the file was saved in"
        if self._first_bytes().startswith(UTF16_BOMS):
            hint = "it is UTF-16: set csv: {encoding: utf-16} in the mapping"
        return self.refuse(
            f"{shown} on line {line:,} (byte {offset:,}) is not valid {self._options.encoding}; {hint}.",
            line=line,
            byte=offset,
        )

    def _file_has_quotechar(self) -> bool:
        """Only on the field-limit error path: is there any quote at all (else no field is open)?"""
        quote = self._options.quotechar.encode(self._encoding.replace("-sig", ""), errors="ignore")
        if not quote:
            return True
        try:
            with open(self.path, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    if quote in chunk:
                        return True
        except OSError:
            return True
        return False

    def _first_bytes(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read(2)
        except OSError:
            return b""


def locate_undecodable(path: Path, encoding: str) -> tuple[int, int, bytes]:
    """Line (1-based), byte offset and the bytes of the first undecodable sequence.

    Only called once a decoding error is known, so a second pass over the file is fine.
    """
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line, offset = 1, 0
    with open(path, "rb") as f:
        for chunk in iter(f.readline, b""):
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return line, offset + exc.start, exc.object[exc.start : exc.end]
            line += text.count("\n")
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            return line, offset, exc.object[exc.start : exc.end]
    return line, offset, b""
