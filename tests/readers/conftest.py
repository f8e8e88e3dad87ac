"""Builders for real files in tmp_path. Excel workbooks are generated with openpyxl, never committed."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from importer.readers import SourceRow, open_source


def write_xlsx(
    path: Path,
    rows: Sequence[Sequence[Any]] | dict[int, Sequence[Any]],
    *,
    sheet: str = "Sheet1",
    other_sheets: Iterable[str] = (),
) -> Path:
    """A workbook whose first sheet holds ``rows`` (a list from row 1, or {row number: cells})."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = sheet
    numbered = rows if isinstance(rows, dict) else dict(enumerate(rows, start=1))
    for number, cells in numbered.items():
        for column, value in enumerate(cells, start=1):
            if value is not None:
                ws.cell(row=number, column=column, value=value)
    for name in other_sheets:
        wb.create_sheet(name)
    wb.save(path)
    return path


def patch_first_sheet(path: Path, edit: Callable[[str], str]) -> Path:
    """Rewrite the first sheet's XML: what Excel writes but openpyxl cannot (cached formula values...)."""
    original = path.read_bytes()
    source = path.with_suffix(".orig")
    source.write_bytes(original)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = edit(data.decode("utf-8")).encode("utf-8")
            zout.writestr(item, data)
    source.unlink()
    return path


def set_cached_values(path: Path, cached: dict[str, tuple[str, str | None]]) -> Path:
    """Give formula cells the cached value Excel would have saved.

    ``cached`` maps a cell to (value, cell type): {"G2": ("84", None), "H2": ("#N/A", "e")}.
    """

    def edit(xml: str) -> str:
        for ref, (value, cell_type) in cached.items():
            pattern = re.compile(rf'<c r="{ref}"([^>]*)><f>(.*?)</f>(?:<v\s*/>|<v></v>)')
            type_attr = f' t="{cell_type}"' if cell_type else ""
            xml, count = pattern.subn(
                lambda m, ref=ref, t=type_attr, v=value: (
                    f'<c r="{ref}"{m.group(1)}{t}><f>{m.group(2)}</f><v>{v}</v>'
                ),
                xml,
            )
            assert count == 1, f"no formula cell {ref} in the sheet"
        return xml

    return patch_first_sheet(path, edit)


SST_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
SST_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"
INLINE = re.compile(r'(<c r="[A-Z]+[0-9]+"[^>]*?) t="inlineStr"([^>]*)><is><t[^>]*>(.*?)</t></is></c>', re.S)


def to_shared_strings(path: Path) -> Path:
    """Store the first sheet's texts in a shared-strings table, as Excel does (openpyxl writes
    every text inline)."""
    with zipfile.ZipFile(path) as archive:
        parts = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    table: list[str] = []

    def share(m: re.Match[str]) -> str:
        table.append(m.group(3))
        return f'{m.group(1)} t="s"{m.group(2)}><v>{len(table) - 1}</v></c>'

    sheet = INLINE.sub(share, parts["xl/worksheets/sheet1.xml"].decode("utf-8"))
    parts["xl/worksheets/sheet1.xml"] = sheet.encode("utf-8")
    items = "".join(f'<si><t xml:space="preserve">{text}</t></si>' for text in table)
    parts["xl/sharedStrings.xml"] = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="{len(table)}" '
        f'uniqueCount="{len(table)}">{items}</sst>'
    ).encode()
    rels = parts["xl/_rels/workbook.xml.rels"].decode("utf-8")
    parts["xl/_rels/workbook.xml.rels"] = rels.replace(
        "</Relationships>",
        f'<Relationship Type="{SST_REL}" Target="sharedStrings.xml" Id="rIdSst"/></Relationships>',
    ).encode("utf-8")
    types = parts["[Content_Types].xml"].decode("utf-8")
    parts["[Content_Types].xml"] = types.replace(
        "</Types>", f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SST_TYPE}"/></Types>'
    ).encode("utf-8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path


def read_all(path: Path, **options: Any) -> tuple[list[str] | None, list[SourceRow]]:
    with open_source(path, **options) as source:
        return source.headers, list(source)


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, text: str, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        return path

    return write


@pytest.fixture(name="write_xlsx")
def write_xlsx_fixture(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str, rows: Sequence[Sequence[Any]] | dict[int, Sequence[Any]], **kwargs: Any) -> Path:
        return write_xlsx(tmp_path / name, rows, **kwargs)

    return write


@pytest.fixture(name="set_cached_values")
def set_cached_values_fixture() -> Callable[..., Path]:
    return set_cached_values


@pytest.fixture(name="patch_first_sheet")
def patch_first_sheet_fixture() -> Callable[..., Path]:
    return patch_first_sheet


@pytest.fixture(name="to_shared_strings")
def to_shared_strings_fixture() -> Callable[[Path], Path]:
    return to_shared_strings


@pytest.fixture(name="read_all")
def read_all_fixture() -> Callable[..., tuple[list[str] | None, list[SourceRow]]]:
    return read_all
