"""`importer import` end to end against the sandbox: order, dependencies, row states, exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from importer.sandbox import SandboxServer
from tests.e2e.conftest import REPO, Workspace
from tests.instance import count_rows, default_data

USERS_MAPPING = """
    staging_table: u_hr_user_import
    match: ["users*"]
    after: [departments]
    batch_rows: 2
    columns:
      "Emp ID": {to: "Employee Number", required: true}
      "First": "First Name"
      "Last": "Last Name"
      "Dept": "Department"
      "Title": "Title"
"""


@pytest.fixture
def shuffling(workspace: Workspace) -> Iterator[Workspace]:
    """A sandbox whose scheduling period is long enough that every batch of a small file loads
    within one period: unchained, their import sets would transform in a shuffled order."""
    data = default_data()
    data["instance"]["async_transform_delay_ms"] = 600
    with SandboxServer(data=data) as server:
        workspace.server = server
        workspace.write_config()
        yield workspace


def test_a_later_row_in_a_later_batch_updates_the_earlier_rows_record(shuffling: Workspace) -> None:
    workspace = shuffling
    workspace.mapping("users", USERS_MAPPING)
    lines = ["Emp ID,First,Last,Dept,Title"]
    lines += [f"{900 + i:06d},F{i},L{i},Engineering,Start" for i in range(9)]
    lines.append("000900,F0,L0,Engineering,Final title")  # row 11, batch 5: updates row 2's record
    path = workspace.file("users.csv", "\n".join(lines) + "\n")
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 0, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "done"
    assert summary["rows"] == {"inserted": 9, "updated": 1}
    assert workspace.user("000900")["title"] == "Final title"
    # Five batches, each its own import set, chained: every set after the first runs after the previous.
    sets = workspace.table("sys_import_set", "table_name=u_hr_user_import^ORDERBYsys_created_on")
    assert len(sets) == 5


def test_a_mapping_with_after_transforms_after_the_file_it_depends_on(shuffling: Workspace) -> None:
    workspace = shuffling
    workspace.mapping("users", USERS_MAPPING)
    departments = workspace.file("departments.csv", "Code,Name\nLAB,Laboratory\nMKT,Marketing\n")
    users = workspace.file(
        "users.csv",
        "Emp ID,First,Last,Dept,Title\n000701,Ann,Lab,Laboratory,Chemist\n000702,Max,Mkt,Marketing,Seller\n",
    )
    # The sandbox transforms import sets that are not chained in a deliberately varying order:
    # unchained, the users' set would often meet departments that do not exist yet (error 100).
    result = workspace.cli("import", str(departments), str(users), "--json")
    assert result.code == 0, result.output
    summaries = json.loads(result.stdout)
    assert [(s["state"], s["rows"]) for s in summaries] == [
        ("done", {"inserted": 2}),
        ("done", {"inserted": 2}),
    ]
    laboratory = workspace.table("cmn_department", "name=Laboratory")[0]["sys_id"]
    assert workspace.user("000701")["department"] == laboratory


def test_sample_drops_show_every_row_state_in_report_status_and_exit_code(workspace: Workspace) -> None:
    result = workspace.cli(
        "import", str(REPO / "samples" / "departments.csv"), str(REPO / "samples" / "hr_users.csv")
    )
    assert result.code == 3, result.output  # rows in error / invalid
    assert "row 8: invalid" in result.stdout  # the failed rows are listed with their reasons
    report = {e["source_row"]: e for e in json.loads(workspace.cli("report", "2", "--format", "json").stdout)}
    states = {row: entry["state"] for row, entry in report.items()}
    assert states == {
        2: "inserted",  # Zoë Ångström, in the Legal department the first file created
        3: "updated",  # Ada Lovelace's new title
        4: "ignored",  # Grace Hopper, unchanged
        5: "skipped",  # no employee number to coalesce on
        6: "error",  # e-mail refused by the transform
        7: "error",  # department Marketing does not exist
        8: "invalid",  # 31/02/2026 is not a date: never sent
    }
    assert "Marketing" in report[7]["message"]
    assert "31/02/2026" in report[8]["message"]
    assert report[2]["display_value"] == "Zoë Ångström"
    assert report[2]["target_table"] == "sys_user" and report[2]["import_set"]
    status = json.loads(workspace.cli("status", "--json").stdout)
    assert [(s["name"], s["state"]) for s in status] == [
        ("departments.csv", "done"),
        ("hr_users.csv", "done_with_errors"),
    ]
    assert status[1]["rows"] == {
        "inserted": 1,
        "updated": 1,
        "ignored": 1,
        "skipped": 1,
        "error": 2,
        "invalid": 1,
    }
    # The per-row report file is written, safe for Excel, and the file is archived.
    reports = list((workspace.state / "reports").glob("2-*.csv"))
    assert len(reports) == 1 and reports[0].read_bytes().startswith(b"\xef\xbb\xbf")
    assert len(list((workspace.state / "archive").rglob("*hr_users.csv"))) == 1


def test_a_file_missing_a_required_column_is_rejected_with_the_headers_found(workspace: Workspace) -> None:
    workspace.mapping("users", USERS_MAPPING)
    path = workspace.file("users.csv", "Employee,First\n1,Ann\n")
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "rejected"
    assert "Emp ID" in summary["error"] and "Employee" in summary["error"]
    error_files = list((workspace.state / "failed").glob("*.error.txt"))
    assert len(error_files) == 1 and "Emp ID" in error_files[0].read_text()
    assert path.exists()  # the user's own file is never touched
    assert workspace.table("sys_import_set", "table_name=u_hr_user_import") == []


def test_reject_file_mapping_refuses_a_file_with_an_invalid_row_and_sends_nothing(
    workspace: Workspace,
) -> None:
    workspace.mapping("users", USERS_MAPPING + "    on_invalid_row: reject_file\n")
    path = workspace.file(
        "users.csv", "Emp ID,First,Last,Dept,Title\n000801,A,B,Finance,X\n,No,Id,Finance,Y\n"
    )
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "rejected" and "row 3" in summary["error"]
    assert workspace.table("sys_import_set", "table_name=u_hr_user_import") == []


def test_the_same_content_twice_is_recorded_as_duplicate_and_not_posted(workspace: Workspace) -> None:
    path = REPO / "samples" / "departments.csv"
    assert workspace.cli("import", str(path)).code == 0
    result = workspace.cli("import", str(path), "--json")
    assert json.loads(result.stdout)[0]["state"] == "duplicate"
    assert len(workspace.table("sys_import_set", "table_name=u_department_import")) == 1


def test_check_dry_runs_a_file_and_check_remote_finds_a_label_the_table_lacks(workspace: Workspace) -> None:
    dry = workspace.cli("check", "--file", str(REPO / "samples" / "hr_users.csv"))
    assert dry.code == 3, dry.output  # one invalid row
    assert "6 rows would be sent, 1 invalid" in dry.stdout
    assert "row 8: invalid" in dry.stdout
    assert workspace.cli("check", "--remote").code == 0
    workspace.mapping(
        "typo",
        """
        staging_table: u_hr_user_import
        match: ["typo*"]
        columns:
          "Emp ID": "Employee Number"
          "Mail": "E-mail address"
          "First": "first name"
        """,
    )
    result = workspace.cli("check", "--remote")
    assert result.code == 2
    assert "'E-mail address' is not a label of u_hr_user_import" in result.stdout
    assert "'first name'" in result.stdout and "'First Name'" in result.stdout  # case hint


def test_a_file_broken_far_down_is_rejected_and_says_which_rows_were_already_sent(
    workspace: Workspace,
) -> None:
    workspace.mapping("users", USERS_MAPPING.replace("batch_rows: 2", "batch_rows: 500"))
    good = "".join(f"{300000 + i:06d},F{i},L{i},Engineering,T\n" for i in range(20000)).encode()
    path = workspace.file(
        "users.csv", b"Emp ID,First,Last,Dept,Title\n" + good + b"000999,Bad,\xff\xfe,Engineering,T\n"
    )
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "rejected"
    assert summary["error"].startswith("users.csv: 0xff on line 20,002")  # as the person knows the file
    assert "rows before the problem had already been sent" in summary["error"]
    sent = int(summary["error"].split(" rows before")[0].rsplit("\n", 1)[-1])
    assert sent > 0 and sent % 500 == 0  # whole batches only; the batch holding the bad line was never sent
    assert count_rows(workspace.server.url, "u_hr_user_import") == sent
    entries = json.loads(workspace.cli("report", "1", "--format", "json").stdout)
    assert [e["state"] for e in entries] == ["inserted"] * sent  # their results are recorded


def test_a_mapping_label_the_staging_table_lacks_rejects_the_file_before_anything_is_lost(
    workspace: Workspace,
) -> None:
    workspace.mapping(
        "users",
        """
        staging_table: u_hr_user_import
        match: ["users*"]
        columns:
          "Emp ID": "Employee Number"
          "Mail": "E-mail address"
        """,
    )
    path = workspace.file("users.csv", "Emp ID,Mail\n000901,a@example.com\n")
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "rejected"
    assert "'E-mail address' is not a label of u_hr_user_import" in summary["error"]
    assert "importer check --remote" in summary["error"]
    assert workspace.table("sys_import_set", "table_name=u_hr_user_import") == []  # nothing sent
