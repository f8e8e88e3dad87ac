"""Mapping files as a user writes them, choosing a file's mapping, headers, and row translation."""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

import pytest

from importer.errors import ConfigError, InputFileError
from importer.mapping import Mapping, check_headers, parse_mapping, translate_row
from importer.mapping_files import find_mapping, load_mapping, load_mappings
from importer.readers.base import SourceRow
from importer.readers.options import CsvOptions, ExcelOptions, JsonOptions

EXAMPLE = r"""
staging_table: u_hr_user_import
match: ["hr_users*.csv", "hr_users*.xlsx"]
key_by: label
after: [departments]
batch_rows: 500
on_invalid_row: skip
unmapped: ignore
csv:   {delimiter: ";", encoding: cp1252}
excel: {sheet: Employees, header_row: 1}
json:  {records: data.employees}
columns:
  "Emp ID":     {to: "Employee Number", required: true}
  "First name": "First Name"
  "E-mail":     {to: "Email", strip: true, lower: true, pattern: "^[^@\\s]+@[^@\\s]+$"}
  "Start":      {to: "Start Date", date: "%d/%m/%Y"}
  "address.city": "City"
constants:
  "Source": "HR drop folder"
"""

SOURCE = "mappings/hr_users.yaml"


def mapping_of(data: dict[str, Any], name: str = "m", **extra: Any) -> Mapping:
    return parse_mapping(name, {"staging_table": "u_t", **data, **extra}, f"mappings/{name}.yaml")


def problems(data: object, name: str = "m") -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        parse_mapping(name, data, f"mappings/{name}.yaml")
    return excinfo.value.problems


def row(values: dict[str, str], number: int = 2) -> SourceRow:
    return SourceRow(number=number, values=values)


# --- parsing ---------------------------------------------------------------------------------


def test_the_documented_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "hr_users.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    mapping = load_mapping(path)
    assert mapping.name == "hr_users"
    assert mapping.source == str(path)
    assert mapping.staging_table == "u_hr_user_import"
    assert mapping.match == ("hr_users*.csv", "hr_users*.xlsx")
    assert mapping.key_by == "label"
    assert mapping.after == ("departments",)
    assert mapping.batch_rows == 500
    assert mapping.csv == CsvOptions(delimiter=";", encoding="cp1252")
    assert mapping.excel == ExcelOptions(sheet="Employees", header_row=1)
    assert mapping.json == JsonOptions(records="data.employees")
    assert [c.source for c in mapping.columns] == ["Emp ID", "First name", "E-mail", "Start", "address.city"]
    email = mapping.columns[2]
    assert (email.to, email.strip, email.lower) == ("Email", True, True)
    assert email.pattern is not None and email.pattern.search("a@b.c")
    assert mapping.columns[0].required
    assert mapping.columns[3].date == "%d/%m/%Y"
    assert mapping.constants == {"Source": "HR drop folder"}
    assert mapping.targets == ["Employee Number", "First Name", "Email", "Start Date", "City", "Source"]


def test_defaults() -> None:
    mapping = mapping_of({"columns": {"A": "B"}})
    assert mapping.match == ()
    assert mapping.key_by == "label"
    assert mapping.after == ()
    assert mapping.batch_rows == 500
    assert mapping.on_invalid_row == "skip"
    assert mapping.unmapped == "ignore"
    assert mapping.csv == CsvOptions()
    assert mapping.excel == ExcelOptions()
    assert mapping.json == JsonOptions()
    assert mapping.constants == {}
    # A single glob may be written without a list.
    assert mapping_of({"columns": {"A": "B"}, "match": "a*.csv"}).match == ("a*.csv",)


def test_unknown_keys_anywhere_with_did_you_mean() -> None:
    found = problems(
        {
            "staging_table": "u_t",
            "matches": ["*.csv"],
            "csv": {"delimeter": ";"},
            "columns": {"Emp ID": {"to": "Employee", "requird": True}},
        }
    )
    assert found[0].startswith("mappings/m.yaml: matches: unknown key; did you mean 'match'?")
    assert any(
        p.startswith("mappings/m.yaml: csv.delimeter: unknown key; did you mean 'delimiter'?") for p in found
    )
    assert any(
        p.startswith("mappings/m.yaml: columns.Emp ID.requird: unknown key; did you mean 'required'?")
        for p in found
    )
    assert len(found) == 3


def test_every_problem_at_once() -> None:
    found = problems(
        {
            "staging_table": "U HR Import",
            "key_by": "name",
            "batch_rows": 0,
            "on_invalid_row": "reject",
            "unmapped": "warn",
            "csv": {"delimiter": ";;", "encoding": "klingon"},
            "excel": {"header_row": 0, "sheet": True},
            "json": {"records": "data..x"},
            "columns": {
                "Emp ID": {"required": True},
                "E-mail": {"to": "Email", "pattern": "([a-z"},
                "Start": {"to": "Start Date", "date": "dd/mm/yyyy"},
                "End": {"to": "End Date", "date": "%d/%q/%Y"},
                "Code": {"to": "Code", "default": 7, "strip": "yes"},
            },
            "constants": {"Source": 1},
        }
    )
    expected = {
        "staging_table": "'U HR Import' is not a table name",
        "key_by": "must be one of label, column; got 'name'",
        "batch_rows": "must be a whole number from 1 to 10_000, got 0",
        "on_invalid_row": "must be one of skip, reject_file; got 'reject'; did you mean 'reject_file'?",
        "unmapped": "must be one of ignore, error; got 'warn'",
        "csv.delimiter": "must be one character, got ';;'",
        "csv.encoding": "unknown encoding 'klingon'",
        "excel.header_row": "must be a row number from 1, got 0",
        "excel.sheet": "must be a sheet name or a 0-based index, got True",
        "json.records": "must be a dotted path like data.employees, got 'data..x'",
        "columns.Emp ID.to": "field required",
        "columns.E-mail.pattern": "invalid regular expression '([a-z': unterminated character set",
        "columns.Start.date": "'dd/mm/yyyy' has no strptime directive",
        "columns.End.date": "'%q' is not a strptime directive in '%d/%q/%Y'",
        "columns.Code.default": "must be text, got a number (put it in quotes",
        "columns.Code.strip": "must be true or false, got 'yes'",
        "constants.Source": "must be text, got a number",
    }
    for key, message in expected.items():
        assert any(p.startswith(f"mappings/m.yaml: {key}: {message}") for p in found), (key, found)
    assert len(found) == len(expected)


def test_required_parts() -> None:
    found = problems({})
    assert any(p.startswith("mappings/m.yaml: staging_table: field required") for p in found)
    assert any(p.startswith("mappings/m.yaml: columns: field required") for p in found)
    assert problems(None) == [
        "mappings/m.yaml: the mapping file is empty; it needs at least staging_table and columns"
    ]
    assert problems(["a", "b"])[0].startswith("mappings/m.yaml: must be a mapping of keys")


def test_two_columns_to_the_same_target_and_unquoted_headers() -> None:
    found = problems({"staging_table": "u_t", "columns": {"A": "X", "B": {"to": "X"}, 2024: "Year"}})
    assert "mappings/m.yaml: columns.B.to: 'X' is also the target of column 'A'" in found[0] + found[1]
    assert any("columns.2024: the source header must be non-empty text (put it in quotes" in p for p in found)


def test_options_accept_their_documented_forms() -> None:
    mapping = mapping_of(
        {
            "columns": {"A": "B"},
            "csv": {"delimiter": "\\t"},
            "excel": {"sheet": 2, "header_row": 3},
            "key_by": "column",
            "on_invalid_row": "reject_file",
            "unmapped": "error",
            "batch_rows": 10_000,
        }
    )
    assert mapping.csv.delimiter == "\t"
    assert mapping.excel == ExcelOptions(sheet=2, header_row=3)
    assert (mapping.key_by, mapping.on_invalid_row, mapping.unmapped, mapping.batch_rows) == (
        "column",
        "reject_file",
        "error",
        10_000,
    )


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("staging_table: u_t\ncolumns:\n  A: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: invalid YAML at line \d+, column \d+"):
        load_mapping(path)


def test_a_header_listed_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("staging_table: u_t\ncolumns:\n  A: X\n  A: Y\n")
    with pytest.raises(ConfigError, match=r"line 4, column 3: the key 'A' appears twice"):
        load_mapping(path)


# --- the mappings folder --------------------------------------------------------------------


def write_mapping(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_load_mappings_collects_problems_across_files(tmp_path: Path) -> None:
    write_mapping(tmp_path, "a.yaml", "staging_table: u_a\ncolumns: {X: Y}\nbogus: 1\n")
    write_mapping(tmp_path, "b.yml", "staging_table: u_b\ncolumns: {X: Y}\nafter: [departmets]\n")
    write_mapping(tmp_path, "departments.yaml", "staging_table: u_d\ncolumns: {X: Y}\n")
    write_mapping(tmp_path, "notes.txt", "not a mapping")
    with pytest.raises(ConfigError) as excinfo:
        load_mappings(tmp_path)
    found = excinfo.value.problems
    assert found[0].startswith(f"{tmp_path / 'a.yaml'}: bogus: unknown key")
    assert found[1] == (
        f"{tmp_path / 'b.yml'}: after: no mapping named 'departmets'; did you mean 'departments'? "
        "(mappings: b, departments)"
    )
    assert len(found) == 2


def test_load_mappings_finds_cycles_in_after(tmp_path: Path) -> None:
    write_mapping(tmp_path, "a.yaml", "staging_table: u_a\ncolumns: {X: Y}\nafter: [b]\n")
    write_mapping(tmp_path, "b.yaml", "staging_table: u_b\ncolumns: {X: Y}\nafter: c\n")
    write_mapping(tmp_path, "c.yaml", "staging_table: u_c\ncolumns: {X: Y}\nafter: [a]\n")
    write_mapping(tmp_path, "self.yaml", "staging_table: u_s\ncolumns: {X: Y}\nafter: [self]\n")
    with pytest.raises(ConfigError) as excinfo:
        load_mappings(tmp_path)
    found = excinfo.value.problems
    assert any(
        p.endswith("after: the mappings wait for each other in a cycle: a -> b -> c -> a") for p in found
    )
    assert any(p.endswith("in a cycle: self -> self") for p in found)
    assert len(found) == 2


def test_load_mappings_happy_and_missing_folder(tmp_path: Path) -> None:
    write_mapping(tmp_path, "departments.yaml", "staging_table: u_d\ncolumns: {X: Y}\n")
    write_mapping(tmp_path, "hr_users.yaml", EXAMPLE)
    mappings = load_mappings(tmp_path)
    assert sorted(mappings) == ["departments", "hr_users"]
    with pytest.raises(ConfigError, match=r"mappings folder '.*nowhere' does not exist"):
        load_mappings(tmp_path / "nowhere")


# --- find_mapping -----------------------------------------------------------------------------


@pytest.fixture
def mappings() -> dict[str, Mapping]:
    return {
        "hr_users": mapping_of(
            {"columns": {"A": "B"}, "match": ["hr_users*.csv", "hr_users*.xlsx"]}, "hr_users"
        ),
        "departments": mapping_of({"columns": {"A": "B"}, "match": "dept*.csv"}, "departments"),
        "everything_csv": mapping_of({"columns": {"A": "B"}, "match": ["*.CSV"]}, "everything_csv"),
    }


def test_find_mapping_by_glob_case_insensitively(mappings: dict[str, Mapping]) -> None:
    assert find_mapping({"hr_users": mappings["hr_users"]}, PurePath("HR_Users_2024.XLSX")).name == "hr_users"
    assert find_mapping(mappings, PurePath("hr_users_2024.xlsx")).name == "hr_users"


def test_find_mapping_by_folder_and_explicit(mappings: dict[str, Mapping]) -> None:
    assert find_mapping(mappings, PurePath("departments/anything.csv")).name == "departments"
    assert find_mapping(mappings, PurePath("departments/sub/x.json")).name == "departments"
    assert find_mapping(mappings, PurePath("whatever.csv"), explicit="hr_users").name == "hr_users"
    with pytest.raises(
        ConfigError, match=r"no mapping named 'hr_user'; did you mean 'hr_users'\? \(mappings: "
    ):
        find_mapping(mappings, PurePath("x.csv"), explicit="hr_user")


def test_find_mapping_no_match_and_ambiguous(mappings: dict[str, Mapping]) -> None:
    with pytest.raises(InputFileError) as excinfo:
        find_mapping(mappings, PurePath("payroll.xlsx"))
    message = str(excinfo.value)
    assert message.startswith("no mapping matches 'payroll.xlsx': tried departments: 'dept*.csv'; ")
    assert "hr_users: 'hr_users*.csv', 'hr_users*.xlsx'" in message
    assert message.endswith("add it to a mapping's match: or drop it into inbox/<mapping>/")

    with pytest.raises(
        InputFileError, match=r"more than one mapping matches 'dept_1.csv': departments .*everything_csv"
    ):
        find_mapping(mappings, PurePath("dept_1.csv"))


# --- check_headers ----------------------------------------------------------------------------


def test_check_headers_names_missing_required_columns() -> None:
    mapping = mapping_of({"columns": {"Emp ID": {"to": "N", "required": True}, "Name": "Name"}})
    check_headers(mapping, ["Emp ID ", "Other"])  # whitespace around a header is forgiven
    check_headers(mapping, None)  # JSON: checked row by row instead
    with pytest.raises(InputFileError) as excinfo:
        check_headers(mapping, ["emp id", "Name"])
    assert str(excinfo.value).startswith(
        "required column 'Emp ID' is missing (for 'Emp ID' did you mean 'emp id'?); "
        "the file's headers are: 'emp id', 'Name'"
    )
    two = mapping_of({"columns": {"A": {"to": "A", "required": True}, "B": {"to": "B", "required": True}}})
    with pytest.raises(
        InputFileError, match=r"required columns 'A', 'B' are missing; the file's headers are: 'C'"
    ):
        check_headers(two, ["C"])


def test_check_headers_unmapped_error() -> None:
    mapping = mapping_of({"columns": {"A": "A"}, "unmapped": "error"})
    check_headers(mapping, ["A", ""])
    with pytest.raises(
        InputFileError, match=r"does not name: 'B', 'C'; add them to columns: .*unmapped: ignore"
    ):
        check_headers(mapping, ["A", "B", "C"])
    check_headers(mapping_of({"columns": {"A": "A"}}), ["A", "B"])  # unmapped: ignore


# --- translate_row ----------------------------------------------------------------------------


def test_translate_the_documented_example() -> None:
    mapping = parse_mapping("hr_users", __import__("yaml").safe_load(EXAMPLE), SOURCE)
    result = translate_row(
        mapping,
        row(
            {
                "Emp ID": "000123",
                "First name": "Zoë",
                "E-mail": "  Zoe@Example.COM ",
                "Start": "05/01/2024",
                "address.city": "Lyon",
                "Not mapped": "dropped",
            },
            number=7,
        ),
    )
    assert result.number == 7
    assert result.problem is None
    assert result.record == {
        "Employee Number": "000123",
        "First Name": "Zoë",
        "Email": "zoe@example.com",
        "Start Date": "2024-01-05",
        "City": "Lyon",
        "Source": "HR drop folder",
    }


def test_each_value_option() -> None:
    mapping = mapping_of(
        {
            "columns": {
                "plain": "Plain",
                "kept": "Kept",
                "stripped": {"to": "Stripped", "strip": True},
                "lowered": {"to": "Lowered", "lower": True},
                "defaulted": {"to": "Defaulted", "strip": True, "default": "N/A"},
                "when": {"to": "When", "date": "%d.%m.%Y %H:%M"},
                "excel_date": {"to": "Excel Date", "date": "%d/%m/%Y"},
                "absent": "Absent",
            }
        }
    )
    result = translate_row(
        mapping,
        row(
            {
                "plain": " +44 20 7946 0000 ",
                "kept": "000123",
                "stripped": "  x  ",
                "lowered": "MiXeD",
                "defaulted": "   ",
                "when": "31.12.2023 23:59",
                "excel_date": "2024-02-29",
            }
        ),
    )
    assert result.record == {
        "Plain": " +44 20 7946 0000 ",
        "Kept": "000123",
        "Stripped": "x",
        "Lowered": "mixed",
        "Defaulted": "N/A",
        "When": "2023-12-31 23:59:00",
        "Excel Date": "2024-02-29",
        "Absent": "",
    }
    assert all(type(v) is str for v in result.record.values())


def test_iso_values_from_excel_are_accepted_as_is() -> None:
    mapping = mapping_of({"columns": {"d": {"to": "D", "date": "%d/%m/%Y"}}})
    assert translate_row(mapping, row({"d": "2024-03-01 08:30:00"})).record == {"D": "2024-03-01 08:30:00"}
    assert translate_row(mapping, row({"d": "01/03/2024"})).record == {"D": "2024-03-01"}
    assert translate_row(mapping, row({"d": ""})).record == {"D": ""}


def test_all_problems_of_a_row_in_one_message() -> None:
    mapping = mapping_of(
        {
            "columns": {
                "Emp ID": {"to": "N", "required": True},
                "E-mail": {"to": "Email", "pattern": "^[^@]+@[^@]+$"},
                "Start": {"to": "S", "date": "%d/%m/%Y"},
                "Note": {"to": "Note", "pattern": "^x"},
            }
        }
    )
    result = translate_row(
        mapping, row({"Emp ID": "", "E-mail": "nobody", "Start": "31/02/2024", "Note": ""}, 9)
    )
    assert result.number == 9
    assert result.record is None
    assert result.problem == (
        "'Emp ID' is required but empty; "
        "'E-mail' value 'nobody' does not match pattern ^[^@]+@[^@]+$; "
        "'Start' value '31/02/2024' is not a date in the format %d/%m/%Y"
    )


def test_required_with_default_and_missing_json_fields() -> None:
    mapping = mapping_of(
        {
            "columns": {
                "a.b": {"to": "AB", "required": True},
                "c": {"to": "C", "required": True, "default": "0"},
            }
        }
    )
    assert translate_row(mapping, row({"a.b": "1"})).record == {"AB": "1", "C": "0"}
    assert translate_row(mapping, row({"c": "1"})).problem == "'a.b' is required but missing"


def test_a_row_the_reader_could_not_read_stays_invalid() -> None:
    mapping = mapping_of({"columns": {"A": "A"}})
    result = translate_row(
        mapping, SourceRow(number=4, values={"A": "x"}, problem="3 cells more than headers")
    )
    assert (result.record, result.problem) == (None, "3 cells more than headers")


def test_unmapped_error_is_checked_per_row_for_json() -> None:
    mapping = mapping_of({"columns": {"a.b": "AB"}, "unmapped": "error"})
    assert translate_row(mapping, row({"a.b": "1"})).record == {"AB": "1"}
    assert translate_row(mapping, row({"a.b": "1", "a.c": "2"})).problem == (
        "fields not named by mapping m (unmapped: error): 'a.c'"
    )


def test_translate_row_is_fast_enough() -> None:
    mapping = parse_mapping("hr_users", __import__("yaml").safe_load(EXAMPLE), SOURCE)
    source = row(
        {"Emp ID": "1", "First name": "A", "E-mail": "a@b.c", "Start": "01/02/2024", "address.city": "X"}
    )
    for _ in range(20_000):  # a guard against per-row setup creeping in, not a benchmark
        translate_row(mapping, source)


def test_the_pure_core_imports_no_io_library() -> None:
    """mapping.py and batching.py take and return plain data: importing them loads no reader,
    no YAML, no HTTP client and no database, nor the module that reads mapping files (a fresh
    interpreter, so nothing is loaded before)."""
    import subprocess
    import sys

    heavy = (
        "openpyxl", "python_calamine", "ijson", "requests", "sqlalchemy", "yaml", "tomllib",
        "importer.readers.csv", "importer.readers.excel", "importer.readers.json",
        "importer.mapping_files", "importer.config",
    )  # fmt: skip
    pure = "importer.mapping, importer.appservice_mapping, importer.batching"
    code = f"import sys, {pure}; print(*sorted(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert [name for name in heavy if name in loaded] == []


# Calls that reach the file system or the network; the pure core makes none of them (not
# "replace": str.replace is everywhere, and os.replace needs an os import, refused below).
_IO_CALLS = {
    "open", "read_text", "read_bytes", "write_text", "write_bytes", "iterdir", "glob", "rglob",
    "stat", "exists", "is_file", "is_dir", "mkdir", "unlink", "rename", "listdir",
    "scandir", "urlopen", "connect",
}  # fmt: skip
_PURE_MODULES = ("mapping", "mapping_fields", "appservice_mapping", "batching")


@pytest.mark.parametrize("module", _PURE_MODULES)
def test_the_pure_core_opens_no_file(module: str) -> None:
    """No function of the pure core reads or writes a file: parsing takes the data YAML gave,
    not a path (the YAML is read by importer/mapping_files.py)."""
    import ast

    import importer

    path = Path(importer.__file__).parent / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    calls = sorted(
        f"{path.name}:{node.lineno} {name}()"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (name := getattr(node.func, "attr", getattr(node.func, "id", None))) in _IO_CALLS
    )
    imports = sorted(
        f"{path.name}:{node.lineno} import {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        if alias.name.split(".")[0] in ("os", "pathlib", "io", "shutil", "yaml", "socket", "tempfile")
    )
    assert calls + imports == []
