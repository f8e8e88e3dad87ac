"""product.md's Values paragraph, end to end: what reaches the staging table is what a person typed."""

from __future__ import annotations

import datetime as dt
import json

import openpyxl

from tests.e2e.conftest import Workspace

VALUES_MAPPING = """
    staging_table: u_hr_user_import
    match: ["values*"]
    columns:
      "Emp ID": "Employee Number"
      "First": "First Name"
      "Last": "Last Name"
      "Phone": "Phone"
      "Dept": "Department"
      "Start": {to: "Start Date", date: "%d/%m/%Y"}
      "Title": "Title"
"""
STAGING_FIELDS = "u_employee_number,u_first_name,u_last_name,u_phone,u_department,u_start_date,u_title"


def staged(ws: Workspace) -> dict[str, dict[str, str]]:
    rows = ws.table("u_hr_user_import", "", STAGING_FIELDS)
    return {row["u_employee_number"]: row for row in rows}


def test_csv_with_bom_semicolons_leading_zeros_phones_empty_cells_and_dates(workspace: Workspace) -> None:
    workspace.mapping("values", VALUES_MAPPING)
    path = workspace.file(
        "values.csv",
        "\ufeffEmp ID;First;Last;Phone;Dept;Start;Title\n"
        "000123;Zoë;Ångström;+44 20 7946 0000;Engineering;01/03/2026;0042\n"
        "007;Bo;;;Finance;;\n"
        '"000900";"Multi";"Line";"";"Finance";"";"Head of\nthings"\n',
    )
    result = workspace.cli("import", str(path))
    assert result.code == 0, result.output
    rows = staged(workspace)
    assert set(rows) == {"000123", "007", "000900"}
    assert rows["000123"]["u_first_name"] == "Zoë"
    assert rows["000123"]["u_phone"] == "+44 20 7946 0000"
    assert rows["000123"]["u_start_date"] == "2026-03-01"
    assert rows["000123"]["u_title"] == "0042"
    assert rows["007"]["u_last_name"] == "" and rows["007"]["u_phone"] == ""
    assert rows["000900"]["u_title"] == "Head of\nthings"
    assert workspace.user("000123")["first_name"] == "Zoë"
    report = json.loads(workspace.cli("report", "1", "--format", "json").stdout)
    assert [(e["source_row"], e["state"]) for e in report] == [
        (2, "inserted"),
        (3, "inserted"),
        (4, "inserted"),
    ]


def test_cp1252_file_with_declared_encoding_and_comma_delimiter(workspace: Workspace) -> None:
    workspace.mapping("values", VALUES_MAPPING + '    csv: {encoding: cp1252, delimiter: ","}\n')
    path = workspace.file(
        "values-legacy.csv", "Emp ID,First,Last,Title\n000321,Zoë,Müller,Coût €5\n".encode("cp1252")
    )
    result = workspace.cli("import", str(path))
    assert result.code == 0, result.output
    row = staged(workspace)["000321"]
    assert (row["u_first_name"], row["u_last_name"], row["u_title"]) == ("Zoë", "Müller", "Coût €5")


def test_excel_text_numbers_and_dates(workspace: Workspace) -> None:
    workspace.mapping("values", VALUES_MAPPING)
    path = workspace.root / "drops" / "values.xlsx"
    path.parent.mkdir(exist_ok=True)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Emp ID", "First", "Last", "Phone", "Dept", "Start", "Title"])
    sheet.append(["000123", "Ada", "Text", "+44 20 7946 0000", "Engineering", dt.date(2026, 3, 1), 42.0])
    sheet.append([4711, "Int", "Number", None, "Finance", dt.datetime(2026, 3, 2, 9, 30), 0.1])
    book.save(path)
    result = workspace.cli("import", str(path))
    assert result.code == 0, result.output
    rows = staged(workspace)
    assert rows["000123"]["u_phone"] == "+44 20 7946 0000"
    assert rows["000123"]["u_start_date"] == "2026-03-01"
    assert rows["000123"]["u_title"] == "42"  # no .0 artefact
    assert rows["4711"]["u_phone"] == ""  # an empty cell is "", not None/nan
    assert rows["4711"]["u_start_date"] == "2026-03-02 09:30:00"
    assert rows["4711"]["u_title"] == "0.1"


def test_nested_json_records_path_and_numbers_as_written(workspace: Workspace) -> None:
    workspace.mapping(
        "people",
        """
        staging_table: u_hr_user_import
        match: ["people*.json"]
        json: {records: data.employees}
        columns:
          "id": "Employee Number"
          "name.first": "First Name"
          "name.last": "Last Name"
          "contact.phone": "Phone"
          "grade": "Title"
        """,
    )
    document = (
        '{"data": {"employees": ['
        '{"id": "000555", "name": {"first": "Nia", "last": "Okafor"},'
        ' "contact": {"phone": "+234 1 234"}, "grade": 1.50},'
        '{"id": "000556", "name": {"first": "Ola", "last": null}, "contact": {}, "grade": 7}'
        "]}}"
    )
    path = workspace.file("people.json", document)
    result = workspace.cli("import", str(path))
    assert result.code == 0, result.output
    rows = staged(workspace)
    assert rows["000555"]["u_first_name"] == "Nia" and rows["000555"]["u_phone"] == "+234 1 234"
    assert rows["000555"]["u_title"] == "1.50"
    assert rows["000556"]["u_last_name"] == "" and rows["000556"]["u_title"] == "7"
    report = json.loads(workspace.cli("report", "1", "--format", "json").stdout)
    assert [e["source_row"] for e in report] == [1, 2]  # JSON rows: 1-based position in the array
