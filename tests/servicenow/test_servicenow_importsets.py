"""Import sets by name (importer/servicenow/importsets.py) against the sandbox over real HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from importer.servicenow import InstanceClient
from importer.servicenow.importsets import holds_values
from tests.servicenow.conftest import MakeClient

HR = "u_hr_user_import"


def _post(client: InstanceClient, numbers: range) -> str:
    records = [
        {"Employee Number": f"{n:06d}", "First Name": f"First{n}", "Last Name": f"Last{n}", "Source": "sets"}
        for n in numbers
    ]
    return client.insert_multiple(HR, json.dumps({"records": records}).encode()).import_set_id


def test_states_and_results_of_several_sets_in_one_query_each(sandbox: Any, make_client: MakeClient) -> None:
    client = make_client(sandbox)
    first, second = _post(client, range(7000, 7003)), _post(client, range(7100, 7102))
    assert sandbox.wait_idle()
    sets = client.import_sets
    before = sandbox.counters()["requests"].get("table", 0)
    states = sets.import_set_states([first, second, "no-such-set"])
    assert set(states) == {first, second}
    assert all(s.processed and not s.may_still_process and s.number for s in states.values())
    results = sets.staging_results(HR, [first, second], expected_rows=5)
    assert sandbox.counters()["requests"]["table"] - before == 2  # one query each, no empty page
    assert sorted(r.row for r in results[first]) == [0, 1, 2] and len(results[second]) == 2
    inserted = results[first][0]
    assert inserted.status == "inserted" and inserted.target_sys_id and inserted.target_table == "sys_user"
    assert sets.active_transform_maps(HR) == 1
    per_map = sets.results_per_map(HR, inserted)
    assert per_map is not None and [r.status for r in per_map] == ["inserted"]


def test_an_import_set_is_found_by_its_size_and_first_row_unless_claimed(
    sandbox: Any, make_client: MakeClient
) -> None:
    client = make_client(sandbox)
    since = datetime.now(UTC) - timedelta(seconds=2)
    sys_id = _post(client, range(7200, 7204))
    first = {"Employee Number": "007200", "First Name": "First7200", "Last Name": "Last7200"}
    find = client.import_sets.find_import_set_holding
    found = find(HR, since=since, row_count=4, first_record=first, claimed=())
    assert found is not None and found[0] == sys_id and found[1]
    assert find(HR, since=since, row_count=4, first_record=first, claimed={sys_id}) is None
    assert find(HR, since=since, row_count=3, first_record=first, claimed=()) is None
    other = {"Employee Number": "009999", "First Name": "Nobody", "Last Name": "Else"}
    assert find(HR, since=since, row_count=4, first_record=other, claimed=()) is None


def test_staging_columns_name_elements_and_labels(sandbox: Any, make_client: MakeClient) -> None:
    columns = make_client(sandbox).import_sets.staging_columns(HR)
    assert any(c.label == "Employee Number" and c.element.startswith("u_") for c in columns)
    assert make_client(sandbox).import_sets.staging_columns("u_no_such_import") == []


def test_a_staging_row_is_recognised_by_most_of_its_values() -> None:
    sent = {"Employee Number": "000123", "First Name": "Zoë", "Title": "A" * 60, "Typo": "dropped"}
    staged = {"sys_id": "x", "u_employee_number": "000123", "u_first_name": "Zoë", "u_title": "A" * 40}
    assert holds_values(staged, sent)  # truncated title, unknown key dropped by the instance
    other = {"sys_id": "y", "u_employee_number": "000124", "u_first_name": "Bo", "u_title": "B"}
    assert not holds_values(other, sent)
