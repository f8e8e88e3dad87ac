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


@pytest.fixture(name="read_all")
def read_all_fixture() -> Callable[..., tuple[list[str] | None, list[SourceRow]]]:
    return read_all
