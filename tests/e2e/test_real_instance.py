"""A sandbox as harsh as a real instance (servicenow-notes §11), and importer surviving it.

Every test posts a file of several batches with one behaviour switched on and checks what a
person would: every row has exactly one final result, the right state and target, the instance
holds no duplicate, and nothing hangs (pytest-timeout guards each test).
"""

from __future__ import annotations

import json
from typing import Any

from importer.sandbox import SandboxServer
from tests.e2e.conftest import Workspace
from tests.instance import default_data

USERS = 40
BATCH = 5
USERS_MAPPING = f"""
    staging_table: u_hr_user_import
    match: ["users*"]
    batch_rows: {BATCH}
    columns:
      "Emp ID": "Employee Number"
      "First": "First Name"
      "Last": "Last Name"
      "Dept": "Department"
"""


def users_csv(first: int = 700, count: int = USERS) -> str:
    return "Emp ID,First,Last,Dept\n" + "".join(
        f"{first + i:06d},F{i},L{i},Engineering\n" for i in range(count)
    )


def drop_users(ws: Workspace, name: str = "users.csv", first: int = 700) -> str:
    ws.mapping("users", USERS_MAPPING)
    return str(ws.file(name, users_csv(first)))


def report(ws: Workspace, file_id: int) -> list[dict[str, Any]]:
    result = ws.cli("report", str(file_id), "--format", "json")
    assert result.code == 0, result.output
    return list(json.loads(result.stdout))


def status(ws: Workspace) -> list[dict[str, Any]]:
    result = ws.cli("status", "--json")
    assert result.code == 0, result.output
    return list(json.loads(result.stdout))


def assert_once_each(ws: Workspace, entries: list[dict[str, Any]], first: int = 700) -> None:
    """One final result per row (one transform map), and no duplicate at the instance."""
    assert sorted(e["source_row"] for e in entries) == list(range(2, USERS + 2))
    assert all(e["state"] not in ("pending", "posted") for e in entries)
    staged = ws.table(
        "u_hr_user_import", f"u_employee_numberSTARTSWITH{first // 100:04d}", "u_employee_number"
    )
    numbers = [r["u_employee_number"] for r in staged]
    assert len(numbers) == len(set(numbers)) == USERS, "a row reached the staging table twice"
    for entry in entries:
        if entry["state"] in ("inserted", "updated"):
            assert entry["target_sys_id"], entry
        else:
            assert entry["target_sys_id"] == "", entry


def test_a_cancelled_set_ends_its_rows_as_error_at_once_and_the_rest_transform(workspace: Workspace) -> None:
    workspace.server.set_faults(cancel_import_sets=[3])
    result = workspace.cli("import", drop_users(workspace), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "done_with_errors"
    assert summary["rows"] == {"inserted": USERS - BATCH, "error": BATCH}
    entries = report(workspace, summary["id"])
    assert_once_each(workspace, entries)
    errors = [e for e in entries if e["state"] == "error"]
    assert [e["source_row"] for e in errors] == list(range(2 + 2 * BATCH, 2 + 3 * BATCH))
    assert all("'Cancelled'" in e["message"] or "'cancelled'" in e["message"] for e in errors), errors[0]
    assert all("rerun" in e["message"] for e in errors)
    assert len(workspace.table("sys_user", "employee_numberSTARTSWITH0007")) == USERS - BATCH


def test_an_oncomplete_error_ends_the_sets_rows_as_error(workspace: Workspace) -> None:
    workspace.server.set_faults(oncomplete_error_import_sets=[2])
    result = workspace.cli("import", drop_users(workspace), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "done_with_errors"
    assert summary["rows"] == {"inserted": USERS - BATCH, "error": BATCH}
    entries = report(workspace, summary["id"])
    assert_once_each(workspace, entries)
    errors = [e for e in entries if e["state"] == "error"]
    assert all("state 'error'" in e["message"] and "Transform History" in e["message"] for e in errors)


def test_a_never_transformed_set_times_out_and_a_later_poll_records_its_real_results(
    workspace: Workspace,
) -> None:
    workspace.write_config(transform_timeout_s=1.5)
    workspace.server.set_faults(untransformed_import_sets=[USERS // BATCH])  # the last batch
    path = drop_users(workspace)
    posted = workspace.cli("import", path, "--no-wait", "--json")
    assert posted.code == 0, posted.output
    [summary] = json.loads(posted.stdout)
    file_id = summary["id"]
    # While it waits, status says for how long and on which import set.
    shown = workspace.cli("status")
    assert "waiting" in shown.stdout and "for the transform of import set" in shown.stdout, shown.stdout
    [waiting] = status(workspace)
    assert waiting["waiting_on_import_set"] and waiting["waiting_since"]

    # The daemon in once mode waits for the results: the held set ends its rows as error.
    workspace.inbox.mkdir(exist_ok=True)
    ended = workspace.cli("run", "--once")
    assert ended.code == 3, ended.output
    [after] = status(workspace)
    assert after["state"] == "done_with_errors"
    assert after["rows"] == {"inserted": USERS - BATCH, "error": BATCH}
    timed_out = [e for e in report(workspace, file_id) if e["state"] == "error"]
    assert len(timed_out) == BATCH
    assert all("not transformed within 1.5 s; import set ISET" in e["message"] for e in timed_out)
    assert all("state 'loaded'" in e["message"] for e in timed_out)
    answer = next(workspace.outbox.glob(f"{file_id}-*.report.csv"))
    assert "not transformed within 1.5 s" in answer.read_text(encoding="utf-8-sig")

    # The instance's scheduler recovers: the next poll replaces the timeout results.
    workspace.server.clear_faults()
    assert workspace.server.wait_idle(timeout=20)
    again = workspace.cli("run", "--once")
    assert again.code == 0, again.output
    [final] = status(workspace)
    assert final["state"] == "done"
    assert final["rows"] == {"inserted": USERS}
    entries = report(workspace, file_id)
    assert len(entries) == USERS  # replaced, not added to
    assert_once_each(workspace, entries)
    # The dropper's answer says so too: no error left in the outbox's report.
    assert "not transformed within" not in answer.read_text(encoding="utf-8-sig")
    page = next(workspace.outbox.glob(f"{file_id}-*.report.html")).read_text()
    assert "not transformed within" not in page
    assert len(workspace.table("sys_user", "employee_numberSTARTSWITH0007")) == USERS


def import_users(ws: Workspace, first: int = 700) -> tuple[int, dict[str, Any], str]:
    result = ws.cli("import", drop_users(ws, first=first), "--json")
    summary = json.loads(result.stdout)[0] if result.stdout.strip() else {}
    return result.code, summary, result.output


def assert_all_inserted_once(ws: Workspace, code: int, summary: dict[str, Any], output: str) -> None:
    assert code == 0, output
    assert summary["state"] == "done"
    assert summary["rows"] == {"inserted": USERS}
    assert_once_each(ws, report(ws, summary["id"]))
    assert len(ws.table("sys_user", "employee_numberSTARTSWITH0007")) == USERS
    # One import set per batch: an answer taken for a failure never made a second one.
    assert len(ws.table("sys_import_set", "table_name=u_hr_user_import")) == USERS // BATCH


def test_a_200_carrying_a_quota_cancellation_on_insert_is_looked_up_not_resent(workspace: Workspace) -> None:
    workspace.server.set_faults(quota_cancel=[2, 5], endpoints=["insertMultiple"])
    code, summary, output = import_users(workspace)
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["quota_cancel"] == 2


def test_a_200_whose_body_does_not_parse_on_insert_is_looked_up_not_resent(workspace: Workspace) -> None:
    workspace.server.set_faults(
        quota_cancel=[1, 4, 8], quota_cancel_body="unparsable", endpoints=["insertMultiple"]
    )
    code, summary, output = import_users(workspace)
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["quota_cancel"] == 3


def test_partial_and_unparsable_reads_are_retried_not_taken_as_complete(workspace: Workspace) -> None:
    # Every other Table API read is cancelled by a quota rule: half a page with an error object.
    workspace.server.set_faults(quota_cancel=list(range(1, 400, 2)), endpoints=["table"])
    code, summary, output = import_users(workspace)
    cancelled = workspace.server.counters()["faults_injected"]["quota_cancel"]
    workspace.server.clear_faults()  # for the checks below, made as a person would
    assert code == 0, output
    assert summary["rows"] == {"inserted": USERS}
    assert_once_each(workspace, report(workspace, summary["id"]))
    assert cancelled >= 2


def test_a_202_that_stored_nothing_is_looked_up_then_sent_again_once(workspace: Workspace) -> None:
    workspace.server.set_faults(accepted_202=[2, 3, 7])
    code, summary, output = import_users(workspace)
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["accepted_202"] == 3


def test_429s_without_retry_after_back_off_and_every_row_arrives(workspace: Workspace) -> None:
    workspace.server.set_faults(rate_limit_every=3, rate_limit_headers=False)
    code, summary, output = import_users(workspace)
    workspace.server.clear_faults()  # for the checks below, made as a person would
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["429"] >= 5


def test_a_connection_the_instance_closed_as_it_was_reused_never_becomes_a_duplicate(
    workspace: Workspace,
) -> None:
    workspace.server.set_faults(close_on_reuse=[2, 3, 5, 6, 8])  # within the import's own requests
    code, summary, output = import_users(workspace)
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["closed_on_reuse"] == 5


DEPTS_MAPPING = """
    staging_table: u_department_import
    match: ["depts*"]
    batch_rows: 2
    columns:
      "Code": "Code"
      "Name": "Name"
"""


def test_two_files_posted_in_parallel_use_two_sessions(workspace: Workspace) -> None:
    for example in workspace.mappings.glob("*.yaml"):
        example.unlink()  # the examples link both staging tables through `after:`: one at a time
    workspace.mapping("users", USERS_MAPPING)
    workspace.mapping("depts", DEPTS_MAPPING)
    (workspace.inbox / "users.csv").write_text(users_csv())
    (workspace.inbox / "depts.csv").write_text(
        "Code,Name\n" + "".join(f"D{i:02d},Dept {i}\n" for i in range(16))
    )
    workspace.server.set_faults(latency_ms=20)  # each request takes a while: the files overlap
    result = workspace.cli("run", "--once")
    assert result.code == 0, result.output
    files = {s["name"]: s for s in status(workspace)}
    assert files["users.csv"]["rows"] == {"inserted": USERS}
    assert files["depts.csv"]["rows"] == {"inserted": 16}
    sessions = workspace.server.counters()["sessions"]
    posting = [kinds for kinds in sessions["requests"].values() if kinds.get("insertMultiple")]
    # Each file's worker posted on a session of its own: the instance never serialised them.
    assert len(posting) >= 2, sessions
    assert sum(kinds["insertMultiple"] for kinds in posting) == USERS // BATCH + 16 // 2
    assert sessions["overflows"] == 0
    assert_once_each(workspace, report(workspace, files["users.csv"]["id"]))


def test_rows_hidden_by_an_acl_for_a_while_are_read_again_not_taken_as_gone(workspace: Workspace) -> None:
    # The first reads of the staging table come back short (half the rows, X-Total-Count says all).
    workspace.server.set_faults(
        acl_filter_table="u_hr_user_import", acl_filter_rows="half", acl_filter_reads=3
    )
    code, summary, output = import_users(workspace)
    assert_all_inserted_once(workspace, code, summary, output)
    assert workspace.server.counters()["faults_injected"]["acl"] == 3


def test_rows_an_acl_always_hides_end_as_error_naming_the_table_and_the_role(workspace: Workspace) -> None:
    workspace.write_config(retry_attempts=2)
    workspace.server.set_faults(acl_filter_table="u_hr_user_import", acl_filter_rows="all")
    code, summary, output = import_users(workspace)
    assert code == 3, output
    assert summary["state"] == "done_with_errors"
    assert summary["rows"] == {"error": USERS}
    entries = report(workspace, summary["id"])
    assert sorted(e["source_row"] for e in entries) == list(range(2, USERS + 2))
    message = entries[0]["message"]
    assert "u_hr_user_import" in message and "ACL" in message and "import_admin" in message, message
    assert "svc.import" in message
    workspace.server.clear_faults()
    assert len(workspace.table("sys_import_set", "table_name=u_hr_user_import")) == USERS // BATCH


def test_check_remote_names_missing_read_access_and_the_missing_role(workspace: Workspace) -> None:
    from importer.sandbox.defaults import ITIL_PASSWORD, ITIL_USER

    workspace.mapping("users", USERS_MAPPING)
    workspace.write_config(username=ITIL_USER, password=ITIL_PASSWORD, retry_attempts=1)
    result = workspace.cli("check", "--remote")
    assert result.code == 2, result.output
    for table in ("sys_import_set", "sys_dictionary", "sys_transform_map", "u_hr_user_import"):
        assert f"read access: ServiceNow forbids read on table '{table}'" in result.stdout, result.stdout
    assert "insertMultiple:" in result.stdout and "import_transformer" in result.stdout

    # The right user, but an ACL hides the staging table's rows: named too.
    workspace.write_config(retry_attempts=1)
    assert import_users(workspace)[0] == 0  # rows to hide
    workspace.server.set_faults(acl_filter_table="u_hr_user_import", acl_filter_rows="all")
    result = workspace.cli("check", "--remote")
    assert result.code == 2, result.output
    assert (
        "read access:" in result.stdout and "'u_hr_user_import'" in result.stdout and "ACL" in result.stdout
    )
    workspace.server.clear_faults()
    assert workspace.cli("check", "--remote").code == 0


TITLED_MAPPING = """
    staging_table: u_hr_user_import
    match: ["titled*"]
    batch_rows: 4
    columns:
      "Emp ID": "Employee Number"
      "First": "First Name"
      "Last": "Last Name"
      "Dept": "Department"
      "Title": "Title"
"""


def test_rows_over_the_row_limit_are_refused_up_front_and_rows_the_instance_did_not_store_are_errors(
    workspace: Workspace,
) -> None:
    data = default_data()
    data["instance"]["max_row_bytes"] = 2000  # an instance whose rows are narrower than 8126 bytes
    data["staging_tables"]["u_hr_user_import"]["columns"]["u_title"]["max_length"] = 20000
    with SandboxServer(data=data) as server:
        workspace.server = server
        workspace.write_config()
        workspace.mapping("titled", TITLED_MAPPING)
        titles = {5: "é" * 4100, 9: "t" * 3000, 14: "x" * 9000}  # 8200 bytes, not stored, 9000 bytes
        lines = [f"{800 + i:06d},F{i},L{i},Engineering,{titles.get(i + 2, 'T')}\n" for i in range(16)]
        path = workspace.file("titled.csv", "Emp ID,First,Last,Dept,Title\n" + "".join(lines))
        result = workspace.cli("import", str(path), "--json")
        assert result.code == 3, result.output
        [summary] = json.loads(result.stdout)
        assert summary["rows"] == {"inserted": 13, "invalid": 2, "error": 1}
        entries = {e["source_row"]: e for e in report(workspace, summary["id"])}
        assert sorted(entries) == list(range(2, 18))
        for row in (5, 14):
            assert entries[row]["state"] == "invalid"
            assert "8126 bytes" in entries[row]["message"], entries[row]
        assert entries[9]["state"] == "error"
        assert "did not store this row" in entries[9]["message"] and "8126" in entries[9]["message"]
        assert entries[9]["target_sys_id"] == ""
        assert server.counters()["faults_injected"]["rows_not_stored"] == 1
        assert server.counters()["rows_received"] == 13


def test_rows_without_a_target_record_never_report_a_target_sys_id(workspace: Workspace) -> None:
    workspace.mapping("users", USERS_MAPPING)
    rows = users_csv(count=8).replace("000703,F3,L3,Engineering", ",F3,L3,Engineering")  # skipped
    rows = rows.replace("000704,F4,L4,Engineering", "000704,F4,L4,No such department")  # error
    first = workspace.cli("import", str(workspace.file("users1.csv", rows)), "--json")
    assert first.code == 3, first.output
    again = workspace.cli(
        "import", str(workspace.file("users2.csv", rows + "000799,New,One,Finance\n")), "--json"
    )
    assert again.code == 3, again.output
    [summary] = json.loads(again.stdout)
    assert summary["rows"] == {"ignored": 6, "skipped": 1, "error": 1, "inserted": 1}
    entries = report(workspace, summary["id"])
    for entry in entries:
        if entry["state"] == "inserted":
            assert entry["target_sys_id"], entry
        else:
            assert entry["target_sys_id"] == "" and entry["display_value"] == "", entry


def test_sets_waiting_for_the_scheduler_cost_one_query_per_round_and_polling_backs_off(
    workspace: Workspace,
) -> None:
    from importer.app import runtime
    from importer.config import load_config

    workspace.server.set_faults(untransformed_import_sets=list(range(1, 50)))
    for n in range(3):
        posted = workspace.cli(
            "import", drop_users(workspace, f"users{n}.csv", first=700 + 100 * n), "--no-wait"
        )
        assert posted.code == 0, posted.output
    config = load_config(workspace.config_path)
    with runtime(config) as rt:
        before = workspace.server.counters()["requests"].get("table", 0)
        delays = []
        rounds = 12
        for _ in range(rounds):
            rt.importer.poll_results()
            delays.append(rt.importer.next_poll_delay(10.0))
        queries = workspace.server.counters()["requests"]["table"] - before
    # 24 import sets in flight: one sys_import_set query per round, and now and then one for their
    # transform history while nothing moves; never one per set.
    assert rounds <= queries <= rounds + rounds // 4 + 1, queries
    assert delays[0] == 10.0 and delays[-1] == 80.0 and delays == sorted(delays)


def test_a_403_from_the_import_get_ends_rows_as_error_naming_the_table_and_role(workspace: Workspace) -> None:
    from tests.e2e.test_several_maps import two_map_data

    with SandboxServer(data=two_map_data()) as server:
        workspace.server = server
        workspace.write_config()
        server.set_faults(import_get_403=True)
        code, summary, output = import_users(workspace)
        assert code == 3, output
        assert summary["rows"] == {"error": USERS}
        entries = report(workspace, summary["id"])
        assert sorted(e["source_row"] for e in entries) == list(range(2, USERS + 2))
        message = entries[0]["message"]
        assert "cannot be read" in message and "403" in message and "u_hr_user_import" in message
        assert "role" in message and "ACL" in message, message
        assert entries[0]["target_sys_id"] == ""


def test_a_field_map_without_a_choice_action_creates_the_missing_reference(workspace: Workspace) -> None:
    data = default_data()
    for tmap in data["staging_tables"]["u_hr_user_import"]["transform_maps"]:
        for fm in tmap["field_maps"]:
            fm.pop("choice_action", None)  # the instance's default: create
    with SandboxServer(data=data) as server:
        workspace.server = server
        workspace.write_config()
        workspace.mapping("users", USERS_MAPPING)
        rows = users_csv(count=12).replace("000705,F5,L5,Engineering", "000705,F5,L5,Research")
        result = workspace.cli("import", str(workspace.file("users.csv", rows)), "--json")
        assert result.code == 0, result.output
        assert json.loads(result.stdout)[0]["rows"] == {"inserted": 12}
        [created] = workspace.table("cmn_department", "name=Research")
        assert workspace.user("000705")["department"] == created["sys_id"]


def test_a_transform_that_did_not_complete_ends_its_rows_as_error_though_the_set_says_processing(
    workspace: Workspace,
) -> None:
    # The last batch: sets chained behind a set stuck in processing would wait for it (until
    # transform_timeout_s), as on a real instance.
    workspace.server.set_faults(incomplete_import_sets=[USERS // BATCH])
    code, summary, output = import_users(workspace)
    assert code == 3, output
    assert summary["state"] == "done_with_errors"
    assert summary["rows"] == {"inserted": USERS - BATCH, "error": BATCH}
    entries = report(workspace, summary["id"])
    assert_once_each(workspace, entries)
    errors = [e for e in entries if e["state"] == "error"]
    assert all("'Did not complete'" in e["message"] and "'processing'" in e["message"] for e in errors)
