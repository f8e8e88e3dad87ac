"""How an import behaves when the instance refuses, throttles, fails or drops answers."""

from __future__ import annotations

import json

import requests

from importer.sandbox import SandboxServer
from importer.sandbox.defaults import (
    IMPORT_PASSWORD,
    NO_ROLES_PASSWORD,
    NO_ROLES_USER,
    OAUTH_CLIENT_ID,
    OAUTH_CLIENT_SECRET,
)
from tests.e2e.conftest import REPO, Workspace
from tests.instance import default_data
from tests.waiting import accepts_connections, wait_until

OUTAGE_S = 6  # the instance unreachable (the scenario: the failing command runs inside it, even on a
# loaded machine); the test then waits for its end, not a fixed time

SIXTY_USERS = "Emp ID,First,Last,Dept,Title\n" + "".join(
    f"{500 + i:06d},F{i},L{i},Engineering,T{i}\n" for i in range(60)
)
USERS_MAPPING = """
    staging_table: u_hr_user_import
    match: ["users*"]
    batch_rows: 5
    columns:
      "Emp ID": "Employee Number"
      "First": "First Name"
      "Last": "Last Name"
      "Dept": "Department"
      "Title": "Title"
"""


def import_sixty(ws: Workspace) -> tuple[int, dict[str, int], str]:
    ws.mapping("users", USERS_MAPPING)
    path = ws.file("users.csv", SIXTY_USERS)
    result = ws.cli("import", str(path), "--json")
    rows = json.loads(result.stdout)[0]["rows"] if result.stdout.strip() else {}
    return result.code, rows, result.output


def test_a_wrong_password_is_exit_1_with_an_actionable_message_and_no_secret(workspace: Workspace) -> None:
    workspace.write_config(password="not-the-password-xyzzy")
    result = workspace.cli("import", str(REPO / "samples" / "departments.csv"))
    assert result.code == 1
    assert "401" in result.stderr and "password" in result.stderr
    assert "not-the-password-xyzzy" not in result.output
    assert "Traceback" not in result.output


def test_a_user_without_roles_is_exit_1_naming_the_missing_rights(workspace: Workspace) -> None:
    workspace.write_config(username=NO_ROLES_USER, password=NO_ROLES_PASSWORD)
    result = workspace.cli("import", str(REPO / "samples" / "departments.csv"))
    assert result.code == 1
    assert "403" in result.stderr and "role" in result.stderr


def test_an_unknown_staging_table_is_exit_1_naming_the_table(workspace: Workspace) -> None:
    workspace.mapping("ghost", 'staging_table: u_no_such_table\nmatch: ["ghost*"]\ncolumns: {"A": "A"}\n')
    path = workspace.file("ghost.csv", "A\n1\n")
    result = workspace.cli("import", str(path))
    assert result.code == 1
    assert "u_no_such_table" in result.stderr


def test_a_429_storm_completes_every_row(workspace: Workspace) -> None:
    # Every 4th request refused, each with Retry-After: 1 (the sandbox rounds up, as ServiceNow does).
    workspace.server.set_faults(rate_limit_every=4, rate_limit_retry_after=1)
    code, rows, output = import_sixty(workspace)
    assert code == 0, output
    assert rows == {"inserted": 60}
    assert workspace.server.counters()["faults_injected"]["429"] >= 4


def test_503s_complete_every_row(workspace: Workspace) -> None:
    workspace.server.set_faults(error_503_fraction=0.3, seed=7)
    code, rows, output = import_sixty(workspace)
    assert code == 0, output
    assert rows == {"inserted": 60}
    assert workspace.server.counters()["faults_injected"]["503"] >= 1


def test_a_lost_answer_is_found_at_the_instance_and_not_posted_twice(workspace: Workspace) -> None:
    workspace.server.set_faults(drop_after_commit=[2, 5])
    code, rows, output = import_sixty(workspace)
    assert code == 0, output
    assert rows == {"inserted": 60}
    assert len(workspace.table("sys_import_set", "table_name=u_hr_user_import")) == 12  # no duplicate set
    assert len(workspace.table("u_hr_user_import")) == 60


def test_oauth_tokens_expiring_mid_file_do_not_stop_the_import(workspace: Workspace) -> None:
    workspace.write_config(
        auth="oauth", client_id=OAUTH_CLIENT_ID, client_secret=OAUTH_CLIENT_SECRET, password=IMPORT_PASSWORD
    )
    requests.post(
        f"{workspace.server.url}/sandbox/admin/oauth", json={"access_token_lifetime_s": 1}, timeout=5
    ).raise_for_status()
    workspace.server.set_faults(latency_ms=60)  # 12 batches + polling: several token lifetimes
    code, rows, output = import_sixty(workspace)
    assert code == 0, output
    assert rows == {"inserted": 60}
    assert workspace.server.counters()["requests"].get("oauth", 0) >= 2


def test_an_unreachable_instance_is_exit_1_and_the_same_command_later_resumes(workspace: Workspace) -> None:
    workspace.mapping("users", USERS_MAPPING)
    path = workspace.file("users.csv", SIXTY_USERS)
    workspace.write_config(retry_attempts=2)
    server = workspace.server
    server.set_faults(outage_s=OUTAGE_S)
    wait_until(lambda: not accepts_connections(server.host, server.port), 5, "connections to be refused")
    result = workspace.cli("import", str(path))
    assert result.code == 1
    assert "unreachable" in result.stderr.lower() or "refused" in result.stderr.lower(), result.stderr
    assert "[instance] url" in result.stderr  # what to check
    workspace.server.clear_faults()
    wait_until(lambda: accepts_connections(server.host, server.port), OUTAGE_S + 10, "the outage to end")
    again = workspace.cli("import", str(path), "--json")
    assert again.code == 0, again.output
    [summary] = json.loads(again.stdout)
    assert summary["id"] == 1  # the same file, resumed, not a duplicate
    assert summary["rows"] == {"inserted": 60}
    assert len(workspace.table("u_hr_user_import")) == 60


def test_a_body_refused_as_too_large_is_split_and_every_row_arrives(
    workspace: Workspace,
) -> None:
    data = default_data()
    data["instance"]["max_content_length_bytes"] = 2500  # the instance allows less than we think
    with SandboxServer(data=data) as server:
        workspace.server = server
        workspace.write_config(max_request_bytes=20_000)
        workspace.mapping("users", USERS_MAPPING.replace("batch_rows: 5", "batch_rows: 60"))
        path = workspace.file("users.csv", SIXTY_USERS)
        result = workspace.cli("import", str(path), "--json")
        assert result.code == 0, result.output
        assert json.loads(result.stdout)[0]["rows"] == {"inserted": 60}
        sets = workspace.table("sys_import_set", "table_name=u_hr_user_import")
        assert len(sets) > 1  # split into several requests, each small enough
        assert len(workspace.table("u_hr_user_import")) == 60  # none twice, none lost


def test_a_row_too_large_for_any_request_is_invalid_and_the_rest_is_sent(workspace: Workspace) -> None:
    workspace.write_config(max_request_bytes=10_000)
    workspace.mapping("users", USERS_MAPPING)
    path = workspace.file("users.csv", SIXTY_USERS.replace("T7\n", "T" + "x" * 12_000 + "\n", 1))
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3, result.output
    assert json.loads(result.stdout)[0]["rows"] == {"inserted": 59, "invalid": 1}
    [entry] = [
        e
        for e in json.loads(workspace.cli("report", "1", "--format", "json").stdout)
        if e["state"] == "invalid"
    ]
    # Larger than any request, and so larger than ServiceNow's 8126-byte row: the row limit says it first.
    assert entry["source_row"] == 9 and "8126 bytes" in entry["message"]
