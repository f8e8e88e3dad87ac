"""CSV files: every value as written, rows numbered as a spreadsheet shows them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from importer.errors import InputFileError
from importer.readers import CsvOptions, SourceRow, open_source


def test_text_stays_as_written(write_text, read_all):
    path = write_text(
        "people.csv",
        "Emp ID,Phone,Salary,Start,Note\n"
        "000123,+44 20 7946 0000,42,2024-01-31,\n"
        "007,0044 1234,1.50,31/01/2024,x\n",
    )

    headers, rows = read_all(path)

    assert headers == ["Emp ID", "Phone", "Salary", "Start", "Note"]
    assert rows == [
        SourceRow(
            2,
            {
                "Emp ID": "000123",
                "Phone": "+44 20 7946 0000",
                "Salary": "42",
                "Start": "2024-01-31",
                "Note": "",
            },
        ),
        SourceRow(
            3, {"Emp ID": "007", "Phone": "0044 1234", "Salary": "1.50", "Start": "31/01/2024", "Note": "x"}
        ),
    ]
    assert all(type(v) is str for row in rows for v in row.values.values())


def test_kind_and_headers_are_known_before_any_row(write_text):
    path = write_text("a.csv", "a,b\n1,2\n")
    with open_source(path) as source:
        assert source.kind == "csv"
        assert source.headers == ["a", "b"]


def test_headers_are_stripped_and_a_bom_never_leaks(write_text, read_all):
    path = write_text("bom.csv", "\ufeff Emp ID ,Name \n1,Zoë\n")

    headers, rows = read_all(path)

    assert headers == ["Emp ID", "Name"]
    assert rows[0].values == {"Emp ID": "1", "Name": "Zoë"}


def test_a_utf8_bom_is_honoured_whatever_encoding_is_declared(tmp_path, read_all):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfName,City\nZo\xc3\xab,Z\xc3\xbcrich\n")

    headers, rows = read_all(path, csv=CsvOptions(encoding="cp1252"))

    assert headers == ["Name", "City"]
    assert rows[0].values == {"Name": "Zoë", "City": "Zürich"}


def test_cp1252_file_read_with_declared_encoding(write_text, read_all):
    path = write_text("win.csv", "Name;Amount\nZoë;€ 12,50\n", encoding="cp1252")

    headers, rows = read_all(path, csv=CsvOptions(encoding="cp1252"))

    assert headers == ["Name", "Amount"]
    assert rows[0].values == {"Name": "Zoë", "Amount": "€ 12,50"}


def test_cp1252_file_read_as_utf8_is_refused_with_the_line_and_a_hint(write_text):
    path = write_text("win.csv", "Name,Amount\nAnn,1\nZoë,2\n", encoding="cp1252")

    with pytest.raises(InputFileError) as caught:
        open_source(path)

    message = str(caught.value)
    assert message.startswith("win.csv: ")
    assert "0xeb on line 3" in message
    assert "csv: {encoding: cp1252}" in message


def test_a_decoding_error_deep_in_the_file_is_raised_while_iterating(tmp_path):
    path = tmp_path / "big.csv"
    good = "".join(f"{i},name {i}\n" for i in range(1, 20_000))
    path.write_bytes(b"id,name\n" + good.encode() + b"20000,Zo\xeb\n")

    with open_source(path) as source:
        rows = iter(source)
        assert next(rows).number == 2
        with pytest.raises(InputFileError) as caught:
            for _ in rows:
                pass

    assert "0xeb on line 20,001" in str(caught.value)


def test_semicolon_delimiter_is_sniffed(write_text, read_all):
    path = write_text("semi.csv", "id;name;city\n001;Ann, Jr.;Paris\n002;Bob;Lyon\n")

    headers, rows = read_all(path)

    assert headers == ["id", "name", "city"]
    assert rows[0].values == {"id": "001", "name": "Ann, Jr.", "city": "Paris"}


def test_declared_delimiter_wins_over_sniffing(write_text, read_all):
    path = write_text("pipe.txt", "id|name,first\n1|Smith,Ann\n")

    headers, rows = read_all(path, csv=CsvOptions(delimiter="|"))

    assert headers == ["id", "name,first"]
    assert rows[0].values == {"id": "1", "name,first": "Smith,Ann"}


def test_tsv_files_are_tab_separated_and_unsniffable_files_fall_back_to_comma(write_text, read_all):
    assert read_all(write_text("t.tsv", "a\tb\n1\t2\n"))[0] == ["a", "b"]
    assert read_all(write_text("one.csv", "name\nAnn\n"))[1] == [SourceRow(2, {"name": "Ann"})]


def test_quoted_newlines_do_not_shift_later_row_numbers(write_text, read_all):
    path = write_text(
        "notes.csv",
        'id,note\n1,"first line\nsecond line"\n2,plain\n3,"a ""quoted"" word"\n',
    )

    _, rows = read_all(path)

    assert [(r.number, r.values["note"]) for r in rows] == [
        (2, "first line\nsecond line"),
        (3, "plain"),
        (4, 'a "quoted" word'),
    ]


def test_a_blank_line_counts_as_a_row_but_yields_nothing(write_text, read_all):
    path = write_text("gaps.csv", "id,name\n1,Ann\n\n2,Bob\n,\n3,Cy\n")

    _, rows = read_all(path)

    assert [(r.number, r.values["id"]) for r in rows] == [(2, "1"), (4, "2"), (6, "3")]


def test_windows_line_endings(write_text, read_all):
    _, rows = read_all(write_text("crlf.csv", "id,name\r\n1,Ann\r\n2,Bob\r\n"))
    assert [r.values for r in rows] == [{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bob"}]


def test_ragged_rows(write_text, read_all):
    path = write_text("ragged.csv", "a,b,c,d,e\n1,2,3,4,5\n1,2\n1,2,3,4,5,6\n1,2,3,4,5,,\n")

    _, rows = read_all(path)

    # Fewer cells than headers: the rest are "" and the row is fine (spreadsheets drop trailing empties).
    assert rows[1] == SourceRow(3, {"a": "1", "b": "2", "c": "", "d": "", "e": ""})
    # More cells: values for the known headers, and a problem that makes the row invalid.
    assert rows[2] == SourceRow(
        4,
        {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"},
        problem="row 4 has 6 cells but the header has 5 columns",
    )
    # Extra cells that are empty (a trailing delimiter) are no problem.
    assert rows[3].problem is None


def test_a_trailing_delimiter_on_the_header_line_is_tolerated(write_text, read_all):
    headers, rows = read_all(write_text("trail.csv", "a,b,\n1,2,\n"))
    assert headers == ["a", "b"]
    assert rows == [SourceRow(2, {"a": "1", "b": "2"})]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty.csv: the file is empty: there is no header row"),
        ("\n\n", "empty.csv: the file is empty: there is no header row"),
        ("id,Name,id,Name,x\n1,2,3,4,5\n", 'names "id", "Name" more than once'),
        ("id,,name\n1,2,3\n", "the header row has no name for column 2"),
        ('id,note\n1,"never closed\n2,x\n', "a quoted field starting on row 2 is never closed"),
    ],
)
def test_refused_files(write_text, text, expected):
    with pytest.raises(InputFileError) as caught, open_source(write_text("empty.csv", text)) as source:
        list(source)
    assert expected in str(caught.value)


def test_an_unknown_encoding_is_refused(write_text):
    with pytest.raises(InputFileError, match="not a known encoding"):
        open_source(write_text("a.csv", "a\n1\n"), csv=CsvOptions(encoding="klingon"))


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="disappeared before it could be read"):
        open_source(tmp_path / "gone.csv")


def test_memory_stays_bounded_by_the_row_not_the_file(tmp_path: Path):
    path = tmp_path / "large.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("id,name,email,phone,city\n")
        for i in range(40_000):
            f.write(f"{i:06d},Name {i},n{i}@example.com,+44 20 7946 {i:04d},Paris\n")
    size = path.stat().st_size

    tracemalloc.start()
    try:
        with open_source(path) as source:
            count = sum(1 for _ in source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 40_000
    assert size > 2_000_000
    assert peak < size / 10, f"peak {peak:,} bytes for a {size:,}-byte file"
