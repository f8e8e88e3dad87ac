"""A dropped file -> rows of (row number as a person sees it, {header: text}).

    with open_source(path, csv=..., excel=..., json=...) as source:
        source.headers  # list[str] for CSV/Excel, None for JSON
        for row in source:  # SourceRow, streamed
            ...

The format is chosen by the file's suffix. A file refused as a whole raises
``InputFileError`` — on opening, or while iterating when the fault lies further in the file.
"""

from __future__ import annotations

from pathlib import Path

from importer.errors import InputFileError
from importer.readers._source import RowSource
from importer.readers.base import SourceRow
from importer.readers.options import CsvOptions, ExcelOptions, JsonOptions, ReadLimits

CSV_SUFFIXES = {".csv": None, ".txt": None, ".tsv": "\t"}  # suffix -> delimiter when not declared
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
JSON_SUFFIXES = (".json",)
SUPPORTED_SUFFIXES = (*CSV_SUFFIXES, *EXCEL_SUFFIXES, *JSON_SUFFIXES)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "CsvOptions",
    "ExcelOptions",
    "JsonOptions",
    "ReadLimits",
    "RowSource",
    "SourceRow",
    "open_source",
]


def open_source(
    path: Path,
    csv: CsvOptions = CsvOptions(),  # noqa: B008 - frozen dataclasses, safe as defaults
    excel: ExcelOptions = ExcelOptions(),  # noqa: B008
    json: JsonOptions = JsonOptions(),  # noqa: B008
    limits: ReadLimits = ReadLimits(),  # noqa: B008
) -> RowSource:
    """Open ``path`` for reading rows; use it as a context manager so the file is closed.

    The readers are imported here, not with the package, and only the one the file needs: the
    pure core (mapping.py) uses the package's plain-data modules (base, options) and must not pull
    in openpyxl or ijson, and a CSV file's reading process does not pay for importing openpyxl."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        from importer.readers.csv import CsvSource

        return CsvSource(path, csv, default_delimiter=CSV_SUFFIXES[suffix], limits=limits)
    if suffix in EXCEL_SUFFIXES:
        from importer.readers.excel import ExcelSource

        return ExcelSource(path, excel, limits=limits)
    if suffix in JSON_SUFFIXES:
        from importer.readers.json import JsonSource

        return JsonSource(path, json, limits=limits)
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if suffix == ".xls":
        message = f"{path.name}: old .xls workbooks cannot be read: open it in Excel and save it as .xlsx."
    else:
        what = f"{suffix!r} files" if suffix else "files without a suffix"
        message = f"{path.name}: {what} cannot be read; supported: {supported}."
    raise InputFileError(message, file=str(path))
