"""Excel workbooks: values as Excel shows them, rows numbered as the sheet numbers them."""

from __future__ import annotations

import datetime as dt
import re
import tracemalloc
import zipfile

import openpyxl
import openpyxl.utils.datetime
import pytest

from importer.errors import InputFileError
from importer.readers import ExcelOptions, SourceRow, open_source
from importer.readers.excel import cell_text, number_text

HEADERS = ["Emp ID", "Phone", "Count", "Ratio", "Start", "Stamp", "At", "Active", "Empty"]


def test_values_keep_the_promise(write_xlsx, read_all):
    path = write_xlsx(
        "people.xlsx",
        [
            HEADERS,
            [
                "000123",
                "+44 20 7946 0000",
                42,
                0.1,
                dt.date(2024, 1, 31),
                dt.datetime(2024, 1, 31, 13, 45, 7),
                dt.time(9, 30),
                True,
                None,
            ],
            [
                "007",
                "0044",
                42.0,
                1e-7,
                dt.datetime(2024, 2, 1),
                dt.datetime(2024, 2, 1, 0, 0, 1),
                None,
                False,
            ],
            ["x", None, 123456789012345, 1e20, None, None, None, None, None],
        ],
    )

    headers, rows = read_all(path)

    assert headers == HEADERS
    assert rows[0] == SourceRow(
        2,
        {
            "Emp ID": "000123",
            "Phone": "+44 20 7946 0000",
            "Count": "42",
            "Ratio": "0.1",
            "Start": "2024-01-31",
            "Stamp": "2024-01-31 13:45:07",
            "At": "09:30:00",
            "Active": "TRUE",
            "Empty": "",
        },
    )
    assert rows[1].values == {
        "Emp ID": "007",
        "Phone": "0044",
        "Count": "42",
        "Ratio": "0.0000001",
        "Start": "2024-02-01",  # a datetime at midnight is a date
        "Stamp": "2024-02-01 00:00:01",
        "At": "",
        "Active": "FALSE",
        "Empty": "",
    }
    assert rows[2].values["Count"] == "123456789012345"
    assert rows[2].values["Ratio"] == "100000000000000000000"
    assert all(type(v) is str for row in rows for v in row.values.values())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (42.0, "42"),
        (-3.0, "-3"),
        (0.1, "0.1"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1234.5, "1234.5"),
        (1e-5, "0.00001"),
        (2.5e-10, "2.5e-10"),
        (9007199254740993, "9007199254740993"),
        (1e16, "10000000000000000"),
        (1e22, "1e+22"),
    ],
)
def test_number_text(value, text):
    assert (number_text(value) if isinstance(value, float) else cell_text(value)) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(2024, 1, 31, 13, 45, 6, 999_999), "2024-01-31 13:45:07"),
        (dt.datetime(2024, 1, 31, 23, 59, 59, 600_000), "2024-02-01"),
        (dt.time(9, 5, 3), "09:05:03"),
        (dt.timedelta(hours=26, minutes=5), "26:05:00"),
        ("#N/A", "#N/A"),
    ],
)
def test_cell_text_edges(value, text):
    assert cell_text(value) == text


def test_formulas_by_cached_value_and_errors_by_their_text(write_xlsx, set_cached_values, read_all):
    path = write_xlsx(
        "calc.xlsx", [["n", "double", "lookup", "name"], [21, "=A2*2", "=NA()", '=UPPER("ann")']]
    )
    set_cached_values(path, {"B2": ("42", None), "C2": ("#N/A", "e"), "D2": ("ANN", "str")})

    _, rows = read_all(path)

    assert rows == [SourceRow(2, {"n": "21", "double": "42", "lookup": "#N/A", "name": "ANN"})]


def test_header_row_empty_rows_and_sheet_row_numbers(write_xlsx, read_all):
    path = write_xlsx(
        "report.xlsx",
        {
            1: ["Monthly export"],
            3: [" Emp ID ", "Name"],
            4: ["1", "Ann"],
            6: ["2", "Bob"],
            7: [None, None],
            8: ["3"],
        },
    )

    headers, rows = read_all(path, excel=ExcelOptions(header_row=3))

    assert headers == ["Emp ID", "Name"]
    assert [(r.number, r.values) for r in rows] == [
        (4, {"Emp ID": "1", "Name": "Ann"}),
        (6, {"Emp ID": "2", "Name": "Bob"}),
        (8, {"Emp ID": "3", "Name": ""}),
    ]


def test_sheet_by_name_and_by_index(tmp_path, read_all):
    wb = openpyxl.Workbook()
    first = wb.active
    assert first is not None
    first.title = "Notes"
    first.append(["readme"])
    staff = wb.create_sheet("Employees")
    staff.append(["id"])
    staff.append(["001"])
    path = tmp_path / "book.xlsx"
    wb.save(path)

    assert read_all(path)[0] == ["readme"]
    assert read_all(path, excel=ExcelOptions(sheet="Employees"))[1] == [SourceRow(2, {"id": "001"})]
    assert read_all(path, excel=ExcelOptions(sheet="employees"))[0] == ["id"]
    assert read_all(path, excel=ExcelOptions(sheet=1))[0] == ["id"]


def test_cells_beyond_the_headers_are_a_problem(write_xlsx, read_all):
    path = write_xlsx("wide.xlsx", [["a", "b"], ["1", "2"], ["1", "2", None, "stray"]])

    _, rows = read_all(path)

    assert rows[0].problem is None
    assert rows[1] == SourceRow(
        3, {"a": "1", "b": "2"}, problem="row 3 has values in column D, outside the 2 columns with a header"
    )


def test_a_table_that_starts_further_right(write_xlsx, read_all):
    path = write_xlsx("offset.xlsx", {2: [None, None, "id", "name"], 3: [None, None, "001", "Ann"]})

    headers, rows = read_all(path, excel=ExcelOptions(header_row=2))

    assert headers == ["id", "name"]
    assert rows == [SourceRow(3, {"id": "001", "name": "Ann"})]


def test_a_wrong_declared_dimension_does_not_lose_rows(write_xlsx, patch_first_sheet, read_all):
    path = write_xlsx("dim.xlsx", [["a", "b"], ["1", "2"], ["3", "4"]])
    patch_first_sheet(path, lambda xml: xml.replace('<dimension ref="A1:B3"', '<dimension ref="A1"'))

    headers, rows = read_all(path)

    assert headers == ["a", "b"]
    assert [r.values for r in rows] == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_a_bom_in_a_header_cell_is_removed(write_xlsx, read_all):
    assert read_all(write_xlsx("bom.xlsx", [["\ufeffid", "name"]]))[0] == ["id", "name"]


@pytest.mark.parametrize(
    ("rows", "options", "expected"),
    [
        ([["a"]], ExcelOptions(sheet="Staff"), 'has no sheet "Staff"; its sheets are: "Sheet1", "Other".'),
        ([["a"]], ExcelOptions(sheet=5), "sheet index 5 (0-based) but the workbook has 2 sheet(s)"),
        ([["a"], ["1"]], ExcelOptions(header_row=9), "header_row 9 is beyond the last row (2)"),
        ({3: ["a"]}, ExcelOptions(), 'row 1 of sheet "Sheet1" is empty (the first row with content is 3)'),
        ([], ExcelOptions(), 'sheet "Sheet1" is empty: there is no header row.'),
        ([["id", "x", "id"]], ExcelOptions(), 'the header row names "id" more than once'),
        ([["id", None, "name"]], ExcelOptions(), "the header row has no name for column B"),
        ([["a"]], ExcelOptions(header_row=0), "header_row is 0: rows are numbered from 1."),
    ],
)
def test_refused_workbooks(write_xlsx, rows, options, expected):
    path = write_xlsx("book.xlsx", rows, other_sheets=["Other"])
    with pytest.raises(InputFileError) as caught:
        open_source(path, excel=options)
    assert str(caught.value).startswith("book.xlsx: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"id,name\n1,Ann\n", b"PK\x03\x04 not really a zip"])
def test_a_corrupt_workbook_is_refused(tmp_path, content):
    path = tmp_path / "broken.xlsx"
    path.write_bytes(content)
    with pytest.raises(
        InputFileError, match=r"broken.xlsx: is not a readable .xlsx workbook .*save it again"
    ):
        open_source(path)


def test_a_damaged_sheet_is_refused_while_iterating(write_xlsx, patch_first_sheet):
    path = write_xlsx("cut.xlsx", [["a"], ["1"], ["2"]])
    patch_first_sheet(path, lambda xml: xml.replace('<row r="3"', '<row r="3"><c r="A3"<<<'))

    with pytest.raises(InputFileError, match="damaged"), open_source(path) as source:
        list(source)


def _peak_reading(path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        with open_source(path) as source:
            count = sum(1 for _ in source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak


def test_memory_does_not_grow_with_the_sheet(tmp_path):
    # Texts repeat, as department or city names do: the workbook's shared-strings table (which
    # any reader must hold) stays small, so what is left to measure is the rows.
    peaks = {}
    for rows in (500, 2_000):
        wb = openpyxl.Workbook(write_only=True)
        ws = wb.create_sheet("Data")
        ws.append(["id", "name", "start", "note"])
        for i in range(rows):
            ws.append([i, f"Name {i % 50}", dt.date(2024, 1, 1 + i % 28), "x" * 40])
        path = tmp_path / f"rows{rows}.xlsx"
        wb.save(path)
        count, peaks[rows] = _peak_reading(path)
        assert count == rows

    # Each row's elements are dropped once it is read (with those of the rows before it), so
    # the peak does not grow with the rows read: holding them as SourceRow would cost ~800
    # bytes a row, and openpyxl's parser, which kept an empty element per row, ~150.
    growth_per_row = (peaks[2_000] - peaks[500]) / 1_500
    assert growth_per_row < 50, peaks


def test_a_number_formatted_with_leading_zeros_is_read_as_excel_shows_it(tmp_path):
    """HR sheets often keep employee numbers as numbers formatted 000000: Excel shows 000123."""
    path = tmp_path / "padded.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Emp ID", "Amount"])
    sheet.append([123, 123])
    sheet["A2"].number_format = "000000"
    book.save(path)
    with open_source(path) as source:
        [row] = list(source)
    assert row.values == {"Emp ID": "000123", "Amount": "123"}


def _openpyxl_texts(path) -> list[list[str]]:
    """The reading this reader replaced: openpyxl read-only, each cell through cell_text."""
    book = openpyxl.load_workbook(path, read_only=True, data_only=True, keep_links=False)
    try:
        rows = book.worksheets[0].iter_rows()
        return [[cell_text(c.value, getattr(c, "number_format", None)) for c in row] for row in rows]
    finally:
        book.close()


@pytest.mark.filterwarnings("ignore:Cell .* is marked as a date")  # openpyxl's, on a serial too large
@pytest.mark.parametrize("shared", [False, True], ids=["inline strings", "shared strings"])
def test_values_are_those_openpyxl_read(tmp_path, to_shared_strings, shared):
    """Every kind of cell and number format, read as openpyxl read them."""
    book = openpyxl.Workbook()
    sheet = book.active
    formats = ["General", "0", "0.00", "#,##0", "000000", "0%", "yyyy-mm-dd", "d/m/yy h:mm", "h:mm:ss",
               "[h]:mm:ss", "mm:ss", "@", "0.00E+00", "dd mmm yyyy"]  # fmt: skip
    values = [0, 7, -3, 42.5, 0.1, 1e-9, 123456789012345678, 45292.354166, 0.75, 1.5, 36.25, 2]
    sheet.append(["value", *formats])
    for value in values:
        sheet.append([value] * (len(formats) + 1))
        for column, fmt in enumerate(formats, start=2):
            sheet.cell(row=sheet.max_row, column=column).number_format = fmt
    sheet.append(["text", "0042", True, False, dt.date(1900, 1, 1), dt.datetime(1899, 12, 31, 6), "x" * 300])
    sheet.append([None, None, "after a gap"])
    sheet["Z40"] = "far away"  # a row far down, a cell far right
    path = tmp_path / "formats.xlsx"
    book.save(path)
    if shared:
        to_shared_strings(path)

    expected = _openpyxl_texts(path)
    with open_source(path) as source:
        got = [list(row.values.values()) for row in source]
        headers = source.headers

    assert headers == expected[0][: len(headers or [])]
    width = len(headers or [])
    rows = [(row + [""] * width)[:width] for row in expected[1:] if any(row)]
    assert got == rows
    assert rows[0][:3] == ["0", "0", "0"] and rows[1][5] == "000007"  # what a person sees


def test_rich_text_shared_strings_and_phonetic_guides(write_xlsx, to_shared_strings):
    path = to_shared_strings(write_xlsx("rich.xlsx", [["name", "kana"], ["plain", "x"]]))

    def edit(data: str) -> str:
        # Excel writes a string with two fonts as runs, and a Japanese name with its reading
        # (<rPh>), which the cell does not show.
        return data.replace(
            '<si><t xml:space="preserve">plain</t></si>',
            '<si><r><rPr><b/></rPr><t>bold </t></r><r><t xml:space="preserve">and plain</t></r></si>',
        ).replace(
            '<si><t xml:space="preserve">x</t></si>',
            '<si><t>東京</t><rPh sb="0" eb="2"><t>トウキョウ</t></rPh><phoneticPr fontId="1"/></si>',
        )

    _rewrite(path, "xl/sharedStrings.xml", edit)
    with open_source(path) as source:
        assert [row.values for row in source] == [{"name": "bold and plain", "kana": "東京"}]


def test_cells_and_rows_without_references(write_xlsx):
    """Some generators write neither row numbers nor cell references: rows count on from the
    last one, cells from the left."""
    path = write_xlsx("plain.xlsx", [["a", "b", "c"], ["1", "2", "3"], ["4", "5", "6"]])
    _rewrite(
        path,
        "xl/worksheets/sheet1.xml",
        lambda xml: re.sub(r' r="[A-Z]+[0-9]+"', "", xml.replace('<row r="3"', "<row")),
    )
    with open_source(path) as source:
        assert [(row.number, row.values) for row in source] == [
            (2, {"a": "1", "b": "2", "c": "3"}),
            (3, {"a": "4", "b": "5", "c": "6"}),
        ]


def test_dates_of_a_1904_workbook(tmp_path):
    book = openpyxl.Workbook()
    book.epoch = openpyxl.utils.datetime.CALENDAR_MAC_1904
    sheet = book.active
    sheet.append(["day"])
    sheet.append([dt.date(2024, 2, 29)])
    path = tmp_path / "mac.xlsx"
    book.save(path)
    with open_source(path) as source:
        assert [row.values for row in source] == [{"day": "2024-02-29"}]


def test_a_dtd_in_the_shared_strings_is_refused(write_xlsx, to_shared_strings):
    path = to_shared_strings(write_xlsx("laughs.xlsx", [["a"], ["x"]]))
    _rewrite(
        path,
        "xl/sharedStrings.xml",
        lambda xml: '<?xml version="1.0"?><!DOCTYPE sst [<!ENTITY a "aaaa">]>' + xml.split("?>", 1)[-1],
    )
    with pytest.raises(InputFileError, match=r"laughs\.xlsx: declares XML entities or a DTD"):
        open_source(path)


def _rewrite(path, part: str, edit) -> None:
    with zipfile.ZipFile(path) as archive:
        parts = {info.filename: archive.read(info.filename) for info in archive.infolist()}
    assert part in parts, sorted(parts)
    parts[part] = edit(parts[part].decode("utf-8")).encode("utf-8")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)


def test_iso_date_cells_and_a_workbook_without_styles(write_xlsx):
    """Some generators store dates as ISO text (t="d") and write no styles part at all."""
    path = write_xlsx("iso.xlsx", [["day", "n"], ["x", 1.5]])
    _rewrite(
        path,
        "xl/worksheets/sheet1.xml",
        lambda xml: re.sub(r'<c r="A2"[^>]*>.*?</c>', '<c r="A2" t="d"><v>2024-03-01T10:00:00</v></c>', xml),
    )
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist() if name != "xl/styles.xml"}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    with open_source(path) as source:
        assert [row.values for row in source] == [{"day": "2024-03-01 10:00:00", "n": "1.5"}]
