"""`importer verify`: read back what a finished file became, against the sandbox's contacts data
set (a transform map that drops City, a 12-character Name column) and a correct one."""

from __future__ import annotations

import json
import math
from typing import Any

from importer.sandbox import SandboxServer
from tests.e2e.conftest import REPO, Workspace
from tests.instance import default_data

ROWS = 2000
CLEAN_MAPPING = """
    staging_table: u_contact_clean_import
    match: ["clean*.csv"]
    columns: {"Code": {to: "Code", required: true}, "Name": "Name", "City": "City", "E-mail": "Email"}
"""


def contacts_csv(rows: int, prefix: str = "C") -> str:
    lines = ["Code,Name,City,E-mail"]
    for i in range(rows):
        # Every other name is longer than the trap table's 12-character Name column.
        name = f"N{i}" if i % 2 else f"Someone With A Long Name {i}"
        lines.append(f"{prefix}{i:05d},{name},City {i},p{i}@example.com")
    return "\n".join(lines) + "\n"


def table_requests(ws: Workspace) -> int:
    return int(ws.server.counters()["requests"].get("table", 0))


def imported(ws: Workspace, name: str, content: str) -> int:
    result = ws.cli("import", str(ws.file(name, content)), "--json")
    assert result.code == 0, result.output
    [summary] = json.loads(result.stdout)
    assert summary["rows"] == {"inserted": content.count("\n") - 1}
    return int(summary["id"])


def verify(ws: Workspace, file_id: int) -> tuple[int, list[dict[str, Any]], int]:
    before = table_requests(ws)
    result = ws.cli("verify", str(file_id), "--json")
    assert result.code in (0, 3), result.output
    return result.code, json.loads(result.stdout), table_requests(ws) - before


def test_verify_finds_the_dropped_field_and_the_truncated_values_in_few_requests(
    workspace: Workspace,
) -> None:
    workspace.mapping(
        "contacts", (REPO / "mappings" / "contacts.yaml").read_text().replace("verify: true", "")
    )
    file_id = imported(workspace, "contacts.csv", contacts_csv(ROWS))
    code, differences, requests = verify(workspace, file_id)
    assert code == 3
    dropped = [d for d in differences if "has no field map" in d["note"]]
    truncated = [d for d in differences if d["field"] == "name"]
    assert len(dropped) == ROWS and len(truncated) == ROWS // 2 and len(differences) == len(dropped) * 3 // 2
    first = next(d for d in truncated if d["source_row"] == 2)
    assert (first["sent"], first["found"]) == ("Someone With A Long Name 0", "Someone With")
    assert first["note"] == "truncated to 12 characters by staging column u_name (max_length 12)"
    assert first["target_table"] == "u_contact" and len(first["target_sys_id"]) == 32
    assert {"source_row", "target_table", "target_sys_id", "field", "sent", "found"} <= set(first)
    assert (dropped[0]["sent"], dropped[0]["found"]) == ("City 0", None)
    # One request per 1,000 records read: the target records, then (to explain the differences) the
    # staging rows of the file's import sets; besides them a fixed three (sys_dictionary,
    # sys_transform_map, sys_transform_entry).
    assert requests <= 2 * math.ceil(ROWS / 1000) + 3, requests


def test_verify_passes_a_correct_data_set_in_few_requests(workspace: Workspace) -> None:
    workspace.mapping("clean", CLEAN_MAPPING)
    file_id = imported(workspace, "clean.csv", contacts_csv(ROWS, prefix="K"))
    code, differences, requests = verify(workspace, file_id)
    assert (code, differences) == (0, [])
    assert requests <= math.ceil(ROWS / 1000) + 3, requests
    text = workspace.cli("verify", str(file_id))
    assert text.code == 0 and f"{ROWS} records, {ROWS * 4} values: all match" in text.stdout


def test_verify_true_writes_the_differences_beside_the_report_and_a_cleaned_staging_row_is_said(
    workspace: Workspace,
) -> None:
    file_id = imported(workspace, "contacts.csv", contacts_csv(4))  # the shipped mapping: verify: true
    verify_csv = workspace.state / "reports" / f"{file_id}-contacts.csv.verify.csv"
    lines = verify_csv.read_text().splitlines()
    assert lines[0] == "source_row,target_table,target_sys_id,field,sent,found,note"
    assert len(lines) == 1 + 4 + 2  # four dropped cities, two truncated names
    # ... and the dropper's report page shows them.
    page = (workspace.outbox / f"{file_id}-contacts.csv.report.html").read_text()
    assert "Read back from ServiceNow (6 differences)" in page
    assert "Someone With A Long Name 0" in page

    # The instance's cleanup removes the staging rows: verify says so instead of guessing.
    store = workspace.server.store
    with store.lock:
        staging = store.tables["u_contact_import"]
        for sys_id in list(staging.records):
            store.delete(staging, sys_id)
    code, differences, _ = verify(workspace, file_id)
    assert code == 3
    [gone, *_] = [d for d in differences if d["field"] == "name"]
    assert gone["note"].startswith("staging record gone")


def test_verify_an_app_service_file_through_find_service_and_get_content(workspace: Workspace) -> None:
    result = workspace.cli("import", str(REPO / "samples" / "services.csv"), "--json")
    file_id = json.loads(result.stdout)[0]["id"]
    code, differences, _ = verify(workspace, file_id)
    assert (code, differences) == (0, [])
    # Someone removes a relation and changes a version on the instance.
    store = workspace.server.store
    pay_db = "7c1f3a40db54101037740f95ca961b03"
    with store.lock:
        relations = store.tables["cmdb_rel_ci"]
        for sys_id, record in list(relations.records.items()):
            if record["child"] == pay_db:
                store.delete(relations, sys_id)
        services = store.tables["cmdb_ci_service_auto"]
        payroll = next(s for s, r in services.records.items() if r["name"] == "Payroll")
        services.update(payroll, {"version": "3.5"})
    code, differences, _ = verify(workspace, file_id)
    assert code == 3
    assert [(d["source_row"], d["field"], d["sent"], d["found"]) for d in differences] == [
        (4, "version", "3.4", "3.5"),
        (6, "relation", "pay-app-01 -> pay-db-01", None),
    ]


def test_where_the_field_maps_are_not_readable_the_mappings_verify_fields_stand_in(
    workspace: Workspace,
) -> None:
    data = default_data()
    data["users"].append({"user_name": "reader", "password": "reader-pw", "roles": ["itil"]})
    with SandboxServer(data=data) as server:
        workspace.server = server
        workspace.write_config()
        mapping = (REPO / "mappings" / "contacts.yaml").read_text().replace("verify: true", "")
        workspace.mapping("contacts", mapping)
        file_id = imported(workspace, "contacts.csv", contacts_csv(4))
        workspace.write_config(username="reader", password="reader-pw")  # reads target tables only
        refused = workspace.cli("verify", str(file_id))
        assert refused.code == 2, refused.output
        assert "cannot read sys_dictionary" in refused.stderr and "verify: {fields:" in refused.stderr

        workspace.mapping("contacts", mapping + 'verify: {fields: {"Name": name, "City": city}}\n')
        code, differences, _ = verify(workspace, file_id)
        assert code == 3
        assert sorted((d["source_row"], d["field"]) for d in differences) == [
            (2, "city"), (2, "name"), (3, "city"), (4, "city"), (4, "name"), (5, "city"),
        ]  # fmt: skip
        assert all("not readable" in d["note"] for d in differences if d["field"] == "name")
