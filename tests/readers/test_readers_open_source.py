"""open_source: the format is chosen by the file's suffix."""

from __future__ import annotations

import pytest

from importer.errors import InputFileError
from importer.readers import open_source


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("a.txt", "csv"),
        ("a.Tsv", "csv"),
        ("a.json", "json"),
        ("a.JSON", "json"),
    ],
)
def test_text_formats_by_suffix(write_text, name, kind):
    content = '[{"id": "1"}]' if name.lower().endswith(".json") else "id\n1\n"
    with open_source(write_text(name, content)) as source:
        assert source.kind == kind
        assert [row.values for row in source] == [{"id": "1"}]


@pytest.mark.parametrize("name", ["book.xlsx", "BOOK.XLSX", "macros.xlsm"])
def test_excel_by_suffix(tmp_path, write_xlsx, name):
    path = write_xlsx("book.xlsx", [["id"], ["1"]])
    renamed = path.rename(tmp_path / name)
    with open_source(renamed) as source:
        assert source.kind == "excel"
        assert source.headers == ["id"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("old.xls", "old.xls: old .xls workbooks cannot be read: open it in Excel and save it as .xlsx."),
        (
            "scan.pdf",
            "scan.pdf: '.pdf' files cannot be read; supported: .csv, .txt, .tsv, .xlsx, .xlsm, .json.",
        ),
        ("README", "README: files without a suffix cannot be read; supported: .csv"),
    ],
)
def test_other_suffixes_are_refused(write_text, name, expected):
    with pytest.raises(InputFileError) as caught:
        open_source(write_text(name, "whatever"))
    assert str(caught.value).startswith(expected)
    assert caught.value.context["file"].endswith(name)
