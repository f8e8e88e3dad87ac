"""An .xlsx/.xlsm package read straight from its XML parts, a sheet streamed row by row.

Why not openpyxl's read-only reader: it builds a cell object per cell and reads the
shared-strings table through its object model; for 100,000 rows x 12 columns this parser,
the standard library's C ``XMLPullParser`` over the sheet part with the texts made here,
reads the same values several times faster (``python -m tests.bench --only 6``). Why not
python-calamine (faster still): it gives values without their cells' styles, so a number
formatted ``000000`` loses its leading zeros, error cells come back empty, and it loads
the whole sheet before the first row.

What each cell becomes is openpyxl's reading (data_only) followed by ``cell_text``, so the
values are those of the openpyxl reader this replaces: shared and inline strings (rich text
runs joined, phonetic runs left out), numbers by their cell's number format (dates and
durations through openpyxl's own date rules, ``000000`` zero-padded), booleans, error cells
by their text, formulas by their cached value. Memory: the shared-strings table is held (any
reader must), the sheet is not; each row's elements are dropped once it is read.

Every part goes through ``EventStream``, which refuses a DTD before the parser sees it
(entity expansion, "billion laughs"); zipfile reads no more of a part than the zip directory
declares (a part that inflates further fails its CRC check).
"""

from __future__ import annotations

import gc
import posixpath
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO
from xml.parsers import expat

from defusedxml import DTDForbidden
from openpyxl.styles.numbers import BUILTIN_FORMATS, is_date_format, is_timedelta_format
from openpyxl.utils.datetime import CALENDAR_MAC_1904, WINDOWS_EPOCH, from_excel, from_ISO8601

from importer.readers.excel_text import cell_text, number_text

MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
REL_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
ROW, CELL, VALUE, INLINE, TEXT, RUN, SHEET_DATA = (
    f"{MAIN}{t}" for t in ("row", "c", "v", "is", "t", "r", "sheetData")
)
CHUNK = 64 * 1024  # what the parser is fed at a time
DIGITS = "0123456789"

Element = ET.Element


@dataclass(frozen=True, slots=True)
class Sheet:
    title: str
    part: str  # its member in the zip archive, e.g. "xl/worksheets/sheet1.xml"


class _RootReached(Exception):
    pass


class EventStream:
    """Parse events of one XML part, in batches: ``for batch in EventStream(...): for event,
    element in batch``. A DTD is refused (``DTDForbidden``) before the parser sees it.

    Why not ``XMLPullParser.read_events``: it hands out events one by one from Python code,
    which costs more than parsing the sheet. The C parser appends its events to any list given
    to ``_setevents`` (what ``XMLPullParser`` itself calls); ``report`` changes which events it
    appends from the next chunk on.
    """

    def __init__(self, stream: IO[bytes], events: tuple[str, ...]) -> None:
        self._stream = stream
        self._parser = ET.XMLParser()
        self._batch: list[tuple[str, Element]] = []
        self.report(events)

    def report(self, events: tuple[str, ...]) -> None:
        self._parser._setevents(self._batch, events)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[list[tuple[str, Element]]]:
        # A DTD can only come before the root element: until that is reached, each chunk
        # first goes through a bare expat parser that raises on a DOCTYPE.
        checker = expat.ParserCreate()
        guard: expat.XMLParserType | None = checker

        def doctype(name: str, sysid: str | None, pubid: str | None, _internal: int) -> None:
            raise DTDForbidden(name, sysid, pubid)

        def root(_name: str, _attrs: object) -> None:
            raise _RootReached

        checker.StartDoctypeDeclHandler = doctype
        checker.StartElementHandler = root
        batch = self._batch
        while chunk := self._stream.read(CHUNK):
            if guard is not None:
                try:
                    guard.Parse(chunk, False)
                except _RootReached:
                    guard = None
            self._parser.feed(chunk)
            if batch:
                yield batch
                batch.clear()
        self._parser.close()
        if batch:
            yield batch
            batch.clear()


class Workbook:
    """The package: its worksheets, styles and shared strings. ``rows(sheet)`` streams a sheet."""

    def __init__(self, path: Path) -> None:
        self._zip = zipfile.ZipFile(path)
        try:
            names = set(self._zip.namelist())
            book = _office_document(self._read_rels("_rels/.rels"))
            rels = self._read_rels(_rels_of(book))
            workbook = self._read_tree(book)
            properties = workbook.find(f"{MAIN}workbookPr")
            date1904 = properties is not None and properties.get("date1904", "").lower() in ("1", "true")
            self._date1904 = date1904
            self.worksheets = [  # chart sheets (and dialog or macro sheets) hold no rows
                Sheet(sheet.get("name", ""), target)
                for sheet in workbook.iter(f"{MAIN}sheet")
                if (rel := rels.get(sheet.get(REL_ID, ""))) is not None
                and rel[0].endswith("/worksheet")
                and (target := _resolve(book, rel[1])) in names
            ]
            styles = _part_of(book, rels, "/styles", "xl/styles.xml", names)
            self._styles = self._read_styles(styles) if styles else {}
            strings = _part_of(book, rels, "/sharedStrings", "xl/sharedStrings.xml", names)
            self._strings = self._read_strings(strings) if strings else []
        except BaseException:
            self._zip.close()
            raise

    def close(self) -> None:
        self._zip.close()

    def rows(self, sheet: Sheet, min_row: int = 1) -> Iterator[tuple[int, list[str]]]:
        """(row number, cell texts) for each row from ``min_row`` on, as the sheet stores them.

        Rows the sheet does not store (nothing was ever in them) are not yielded; a row holds
        its cells up to its last stored one, "" for a missing cell."""
        strings = self._strings
        styles = self._styles
        columns: dict[str, int] = {}
        number = last = 0
        container: Element | None = None
        collecting = gc.isenabled()  # paused while parsing, as it is while it reads strings
        with self._zip.open(sheet.part) as stream, _gc_paused():
            events = EventStream(stream, ("start", "end"))  # "start" until <sheetData> is seen
            for batch in events:
                for event, element in batch:
                    tag = element.tag
                    if event == "start":
                        if tag == SHEET_DATA and container is None:
                            container = element
                            events.report(("end",))
                        continue
                    if tag != ROW:
                        continue
                    ref = element.get("r")
                    number = int(ref) if ref else number + 1
                    if number < min_row or number <= last:  # before the wanted rows, or out of order
                        (container if container is not None else element).clear()
                        continue
                    last = number
                    texts: list[str] = []
                    width = 0
                    for cell in element:
                        kind = cell.get("t")
                        if kind is None or kind == "n":
                            value = cell.findtext(VALUE)
                            if not value:
                                text = ""
                            elif (style := cell.get("s")) and (convert := styles.get(style)):
                                text = convert(value)
                            else:
                                amount = cast_number(value)
                                text = number_text(amount) if type(amount) is float else str(amount)
                        elif kind == "s":
                            value = cell.findtext(VALUE)
                            text = strings[int(value)] if value else ""
                        elif kind == "inlineStr":
                            inline = cell.find(INLINE)
                            text = rich_text(inline) if inline is not None else ""
                        elif kind == "b":
                            value = cell.findtext(VALUE)
                            text = ("TRUE" if int(value) else "FALSE") if value else ""
                        elif kind == "d":
                            value = cell.findtext(VALUE)
                            text = cell_text(from_ISO8601(value)) if value else ""
                        else:  # "e" (error cells: "#N/A"...), "str" (a formula's text)
                            text = cell.findtext(VALUE) or ""
                        cell_ref = cell.get("r")
                        if cell_ref is None:
                            column = width
                        else:
                            letters = cell_ref.rstrip(DIGITS)
                            column = columns.get(letters, -1)
                            if column < 0:
                                column = columns[letters] = column_index(letters)
                        if column == len(texts):
                            texts.append(text)
                        elif column > len(texts):
                            texts.extend([""] * (column - len(texts)))
                            texts.append(text)
                        else:
                            texts[column] = text
                        width = column + 1
                    if width < len(texts):  # a row ends at its last cell, as openpyxl reads it
                        del texts[width:]
                    if container is not None:
                        container.clear()  # this row and those before it: nothing is kept
                    if collecting:
                        gc.enable()  # the caller's work is the caller's
                    yield number, texts
                    if collecting:
                        gc.disable()

    # -- the parts read on opening ------------------------------------------------------------

    def _read_tree(self, part: str) -> Element:
        with self._zip.open(part) as stream:
            root: Element | None = None
            for batch in EventStream(stream, ("end",)):
                root = batch[-1][1]
        if root is None:
            raise ValueError(f"{part} is empty")
        return root

    def _read_rels(self, part: str) -> dict[str, tuple[str, str]]:
        """Relationship id -> (type, target)."""
        try:
            tree = self._read_tree(part)
        except KeyError:
            return {}
        return {
            rel.get("Id", ""): (rel.get("Type", ""), rel.get("Target", ""))
            for rel in tree.iter(f"{RELS}Relationship")
        }

    def _read_styles(self, part: str) -> dict[str, Callable[[str], str]]:
        """Cell style index (as the ``s`` attribute writes it) -> its number's text, for styles
        whose number format is not General."""
        tree = self._read_tree(part)
        custom = {
            int(fmt.get("numFmtId", "-1")): fmt.get("formatCode", "")
            for fmt in tree.iterfind(f"{MAIN}numFmts/{MAIN}numFmt")
        }
        converters: dict[str, Callable[[str], str]] = {}
        for index, xf in enumerate(tree.iterfind(f"{MAIN}cellXfs/{MAIN}xf")):
            fmt_id = int(xf.get("numFmtId", "0"))
            fmt = custom[fmt_id] if fmt_id in custom else BUILTIN_FORMATS.get(fmt_id)
            if is_date_format(fmt):
                converters[str(index)] = _date_text(self._date1904, is_timedelta_format(fmt))
            elif fmt and fmt != "General":
                converters[str(index)] = _formatted_number(fmt)
        return converters

    def _read_strings(self, part: str) -> list[str]:
        strings: list[str] = []
        container: Element | None = None
        item = f"{MAIN}si"
        with self._zip.open(part) as stream, _gc_paused():
            events = EventStream(stream, ("start", "end"))  # "start" until the <sst> root is seen
            for batch in events:
                for event, element in batch:
                    if event == "start":
                        if container is None:
                            container = element
                            events.report(("end",))
                    elif element.tag == item:
                        strings.append(rich_text(element).replace("x005F_", ""))  # as openpyxl does
                        if container is not None:
                            container.clear()
        return strings


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a part is parsed.

    The parser makes and drops an element per cell: millions for a large sheet, none of them
    in a reference cycle (each is freed when its row is cleared). With the collector running,
    the elements alive in a chunk survive young collections and are promoted, and each
    promotion wave triggers a full collection that walks everything the process holds: for a
    caller that keeps the rows it reads, that was half of the reading time (5 s of 10 for
    100,000 rows). Nothing is lost by pausing it: what the caller frees is still collected.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rich_text(element: Element) -> str:
    """The text of a string item (``<si>``, ``<is>``): its ``<t>`` and its runs' ``<t>``, not
    the phonetic guide (``<rPh>``)."""
    if len(element) == 1 and element[0].tag == TEXT:
        return element[0].text or ""
    parts = [element.findtext(TEXT) or ""]
    parts.extend(run.findtext(TEXT) or "" for run in element.iterfind(RUN))
    return "".join(parts)


def cast_number(value: str) -> int | float:
    return float(value) if "." in value or "e" in value or "E" in value else int(value)


def _formatted_number(fmt: str) -> Callable[[str], str]:
    return lambda value: cell_text(cast_number(value), fmt)


def _date_text(date1904: bool, duration: bool) -> Callable[[str], str]:
    return lambda value: _date_or_duration(value, date1904, duration)


@lru_cache(maxsize=4096)  # dates repeat (a start date, a month): each is worked out once
def _date_or_duration(value: str, date1904: bool, duration: bool) -> str:
    epoch = CALENDAR_MAC_1904 if date1904 else WINDOWS_EPOCH
    try:
        moment = from_excel(cast_number(value), epoch, timedelta=duration)
    except (OverflowError, ValueError):
        return "#VALUE!"  # a serial outside the calendar: openpyxl reads it as this error
    return cell_text(moment)


def column_index(letters: str) -> int:
    """0-based index of a column named by letters ("A" -> 0, "AA" -> 26)."""
    if not letters or len(letters) > 3 or not letters.isalpha() or not letters.isascii():
        raise ValueError(f"{letters!r} is not a column name")
    index = 0
    for letter in letters.upper():
        index = index * 26 + ord(letter) - 64
    return index - 1


def _office_document(rels: dict[str, tuple[str, str]]) -> str:
    for kind, target in rels.values():
        if kind.endswith("/officeDocument"):
            return _resolve("", target)
    return "xl/workbook.xml"


def _rels_of(part: str) -> str:
    folder, name = posixpath.split(part)
    return posixpath.join(folder, "_rels", f"{name}.rels")


def _resolve(source: str, target: str) -> str:
    """A relationship's target as a member name: absolute ("/xl/...") or relative to the
    folder of the part that declares it."""
    if target.startswith("/"):
        return posixpath.normpath(target.lstrip("/"))
    return posixpath.normpath(posixpath.join(posixpath.dirname(source), target))


def _part_of(book: str, rels: dict[str, tuple[str, str]], kind: str, default: str, names: set[str]) -> str:
    for rel_kind, target in rels.values():
        if rel_kind.endswith(kind) and (part := _resolve(book, target)) in names:
            return part
    return default if default in names else ""
