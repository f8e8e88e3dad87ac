"""Import Set API over real HTTP: insertMultiple, single POST, GET of a row's results, and errors."""

from __future__ import annotations

import json

import pytest
import requests
from sandbox_helpers import rows_of, two_map_data

from importer.sandbox import defaults as d

HR = "u_hr_user_import"


def _user(number: str, **extra: str) -> dict[str, str]:
    row = {
        "Employee Number": number,
        "First Name": "Alan",
        "Last Name": "Turing",
        "Email": "alan.turing@example.com",
        "Department": "Engineering",
    }
    row.update(extra)
    return row


def test_insert_multiple_answers_ids_and_transforms_asynchronously(sandbox, api):
    s = api(sandbox)
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": [_user("000100")]})
    assert r.status_code == 201
    body = r.json()
    assert set(body) == {"import_set_id", "multi_import_set_id"}
    iset = s.get(f"{sandbox.url}/api/now/table/sys_import_set/{body['import_set_id']}").json()["result"]
    assert iset["number"].startswith("ISET")
    assert iset["mode"] == "asynchronous"
    assert iset["table_name"] == HR
    assert iset["multi_import_set"]["value"] == body["multi_import_set_id"]
    assert iset["state"] in ("loaded", "processing", "processed")
    assert sandbox.wait_idle(5)
    iset = s.get(f"{sandbox.url}/api/now/table/sys_import_set/{body['import_set_id']}").json()["result"]
    assert iset["state"] == "processed"
    assert len(iset["sys_created_on"]) == 19 and iset["load_completed"]
    [row] = rows_of(s, HR, body["import_set_id"])
    assert row["sys_import_state"] == "inserted"
    assert row["sys_import_row"] == "0"
    assert row["sys_target_table"] == "sys_user"
    user = s.get(
        f"{sandbox.url}/api/now/table/sys_user/{row['sys_target_sys_id']}",
        params={"sysparm_display_value": "true", "sysparm_exclude_reference_link": "true"},
    ).json()
    assert user["result"]["name"] == "Alan Turing"
    assert user["result"]["department"] == "Engineering"
    multi = s.get(f"{sandbox.url}/api/now/table/sys_multi_import_set/{body['multi_import_set_id']}")
    assert multi.status_code == 200


def test_rows_keep_the_order_of_the_records_array_from_zero(sandbox, api):
    s = api(sandbox)
    records = [_user(f"0002{i:02d}") for i in range(12)]
    set_id = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": records}).json()[
        "import_set_id"
    ]
    rows = rows_of(s, HR, set_id, "sys_import_row,u_employee_number,sys_import_state")
    assert [r["sys_import_row"] for r in rows] == [str(i) for i in range(12)]
    assert [r["u_employee_number"] for r in rows] == [f"0002{i:02d}" for i in range(12)]
    assert sandbox.wait_idle(5)
    assert {r["sys_import_state"] for r in rows_of(s, HR, set_id)} == {"inserted"}


def test_row_outcomes_inserted_updated_ignored_skipped_error(sandbox, api):
    s = api(sandbox)
    records = [
        _user(
            "000042",
            **{
                "First Name": "Ada",
                "Last Name": "Lovelace",
                "Email": "ada.lovelace@example.com",
                "Title": "Engineer",
            },
        ),  # seeded and unchanged
        _user(
            "000043",
            **{
                "First Name": "Grace",
                "Last Name": "Hopper",
                "Email": "grace.hopper@example.com",
                "Department": "Operations",
                "Title": "Commodore",
            },
        ),  # seeded: title changes
        _user(""),  # no coalesce value
        _user("000300", Email="not-an-address"),
        _user("000301", Department="Nowhere"),
        _user("000302"),
    ]
    set_id = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": records}).json()[
        "import_set_id"
    ]
    assert sandbox.wait_idle(5)
    rows = rows_of(s, HR, set_id)
    assert [r["sys_import_state"] for r in rows] == [
        "ignored",
        "updated",
        "skipped",
        "error",
        "error",
        "inserted",
    ]
    assert rows[0]["sys_import_state_comment"] == "No field values changed"
    assert "coalesce" in rows[2]["sys_import_state_comment"]
    assert "not-an-address" in rows[3]["sys_import_state_comment"]
    assert rows[4]["sys_import_state_comment"] == "Reference value 'Nowhere' not found in cmn_department.name"
    error = s.get(f"{sandbox.url}/api/now/table/sys_import_set_row_error/{rows[4]['sys_row_error']}").json()
    assert error["result"]["error_code"] == "100"
    runs = s.get(
        f"{sandbox.url}/api/now/table/sys_import_set_run",
        params={"sysparm_query": f"set={set_id}", "sysparm_exclude_reference_link": "true"},
    ).json()
    [run] = runs["result"]
    assert run["state"] == "Complete with errors"
    assert (run["total"], run["inserts"], run["updates"], run["ignored"], run["skipped"], run["errors"]) == (
        "6",
        "1",
        "1",
        "1",
        "1",
        "2",
    )
    # A GET of an error row names the staging row itself and says why.
    got = s.get(f"{sandbox.url}/api/now/import/{HR}/{rows[4]['sys_id']}").json()
    [result] = got["result"]
    assert result["status"] == "error"
    assert result["sys_id"] == rows[4]["sys_id"]
    assert "Nowhere" in result["error_message"]
    ignored = s.get(f"{sandbox.url}/api/now/import/{HR}/{rows[0]['sys_id']}").json()["result"][0]
    assert ignored["status_message"] == "No field values changed"


def test_a_later_row_updates_the_record_an_earlier_row_inserted(sandbox, api):
    s = api(sandbox)
    records = [
        _user("000400", Title="Intern"),
        _user("000400", Title="Engineer"),
        _user("000400", Title="engineer".upper()),
    ]
    set_id = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": records}).json()[
        "import_set_id"
    ]
    assert sandbox.wait_idle(5)
    rows = rows_of(s, HR, set_id)
    assert [r["sys_import_state"] for r in rows] == ["inserted", "updated", "updated"]
    assert len({r["sys_target_sys_id"] for r in rows}) == 1
    users = s.get(
        f"{sandbox.url}/api/now/table/sys_user", params={"sysparm_query": "employee_number=000400"}
    ).json()["result"]
    assert [u["title"] for u in users] == ["ENGINEER"]


def test_coalesce_is_case_insensitive(sandbox, api):
    s = api(sandbox)
    s.post(
        f"{sandbox.url}/api/now/import/u_department_import", json={"Code": "eng", "Name": "Engineering R&D"}
    )
    depts = s.get(
        f"{sandbox.url}/api/now/table/cmn_department", params={"sysparm_query": "nameSTARTSWITHEng"}
    )
    assert [d_["name"] for d_ in depts.json()["result"]] == ["Engineering R&D"]


def test_unknown_keys_are_dropped_and_counted_and_values_mangled_and_truncated(sandbox, api):
    s = api(sandbox)
    record = {
        **_user("000500"),
        "u_title": "by name, not label",
        "Nickname": "x",
        "Phone": 5551234,
        "Source": {"a": 1},
        "Title": "T" * 60,
        "Start Date": True,
    }
    set_id = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": [record]}).json()[
        "import_set_id"
    ]
    [row] = rows_of(s, HR, set_id)
    assert row["u_title"] == "T" * 40  # max_length 40, silently truncated
    assert row["u_phone"] == "5551234"
    assert row["u_source"] == '{"a"=1}'
    assert row["u_start_date"] == "true"
    counters = sandbox.counters()
    assert counters["unknown_keys_dropped"] == 2
    assert counters["values_mangled"] == 3
    assert counters["rows_received"] == 1
    assert counters["requests"]["insertMultiple"] == 1


def test_keys_by_column_name_and_synchronous_mode(make_sandbox, api):
    srv = make_sandbox(two_map_data())
    s = api(srv)
    r = s.post(
        f"{srv.url}/api/now/v2/import/u_by_name_import/insertMultiple",
        json={"records": [{"u_code": "A1", "u_name": "Ann", "Name": "dropped: labels do not match"}]},
    )
    assert r.status_code == 201
    iset = s.get(f"{srv.url}/api/now/table/sys_import_set/{r.json()['import_set_id']}").json()["result"]
    assert iset["mode"] == "synchronous"
    assert iset["state"] == "processed"  # transformed before the answer
    [row] = rows_of(s, "u_by_name_import", r.json()["import_set_id"])
    assert (row["u_name"], row["sys_import_state"]) == ("Ann", "inserted")
    assert srv.counters()["unknown_keys_dropped"] == 1


def test_two_maps_run_in_order_and_each_gives_a_result(make_sandbox, api):
    srv = make_sandbox(two_map_data())
    s = api(srv)
    set_id = s.post(
        f"{srv.url}/api/now/import/u_people_import/insertMultiple",
        json={"records": [{"Code": "P1", "Name": "Pat Jones the Third"}, {"Code": "P2", "Name": ""}]},
    ).json()["import_set_id"]
    assert srv.wait_idle(5)
    rows = rows_of(s, "u_people_import", set_id)
    assert rows[0]["u_name"] == "Pat Jones "  # max_length 10
    # The staging row shows the last map (Badges, order 200)...
    assert rows[1]["sys_import_state"] == "inserted"
    assert rows[1]["sys_target_table"] == "u_badge"
    # ...the per-map results show both, in map order.
    results = s.get(f"{srv.url}/api/now/import/u_people_import/{rows[1]['sys_id']}").json()["result"]
    assert [(x["transform_map"], x["table"], x["status"]) for x in results] == [
        ("People", "u_person", "error"),
        ("Badges", "u_badge", "inserted"),
    ]
    first = s.get(f"{srv.url}/api/now/v1/import/u_people_import/{rows[0]['sys_id']}").json()
    assert [x["display_value"] for x in first["result"]] == ["Pat Jones ", "Pat Jones "]
    assert first["result"][0]["record_link"].startswith(f"{srv.url}/api/now/table/u_person/")
    runs = s.get(f"{srv.url}/api/now/table/sys_import_set_run", params={"sysparm_query": f"set={set_id}"})
    assert sorted(r["state"] for r in runs.json()["result"]) == ["Complete", "Complete with errors"]


def test_single_post_transforms_synchronously(sandbox, api):
    s = api(sandbox)
    r = s.post(f"{sandbox.url}/api/now/import/{HR}", json=_user("000600"))
    assert r.status_code == 201
    body = r.json()
    assert body["staging_table"] == HR
    assert body["import_set"].startswith("ISET")
    [result] = body["result"]
    assert result["transform_map"] == "HR users"
    assert result["table"] == "sys_user"
    assert result["display_name"] == "name"
    assert result["display_value"] == "Alan Turing"
    assert result["status"] == "inserted"
    assert result["record_link"] == f"{sandbox.url}/api/now/table/sys_user/{result['sys_id']}"
    again = s.post(f"{sandbox.url}/api/now/v1/import/{HR}", json=_user("000600")).json()
    assert again["result"][0]["status"] == "ignored"
    assert again["result"][0]["status_message"] == "No field values changed"
    # Synchronous rows share the table's open import set.
    assert again["import_set"] == body["import_set"]


def test_single_post_with_an_array_processes_only_the_first_element(sandbox, api):
    s = api(sandbox)
    r = s.post(
        f"{sandbox.url}/api/now/import/u_department_import",
        json=[{"Code": "X1", "Name": "First"}, {"Code": "X2", "Name": "Second"}],
    )
    assert r.status_code == 201
    names = [
        x["name"]
        for x in s.get(
            f"{sandbox.url}/api/now/table/cmn_department", params={"sysparm_query": "idINX1,X2"}
        ).json()["result"]
    ]
    assert names == ["First"]


def test_get_of_an_unknown_row_is_404(sandbox, api):
    s = api(sandbox)
    r = s.get(f"{sandbox.url}/api/now/import/{HR}/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "No Record found",
            "detail": "Record doesn't exist or ACL restricts the record retrieval",
        },
        "status": "failure",
    }


def test_get_before_the_transform_shows_the_pending_row(make_sandbox, api):
    data = two_map_data()
    data["instance"]["async_transform_delay_ms"] = 3000
    srv = make_sandbox(data)
    s = api(srv)
    set_id = s.post(
        f"{srv.url}/api/now/import/u_people_import/insertMultiple",
        json={"records": [{"Code": "Q", "Name": "Quinn"}]},
    ).json()["import_set_id"]
    [row] = rows_of(s, "u_people_import", set_id)
    [result] = s.get(f"{srv.url}/api/now/import/u_people_import/{row['sys_id']}").json()["result"]
    assert result["status"] == "pending"
    assert result["table"] == "u_people_import"


def test_insert_multiple_with_no_records_makes_an_empty_processed_set(sandbox, api):
    s = api(sandbox)
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": []})
    assert r.status_code == 201
    assert sandbox.wait_idle(5)
    iset = s.get(f"{sandbox.url}/api/now/table/sys_import_set/{r.json()['import_set_id']}").json()["result"]
    assert iset["state"] == "processed"


def test_multi_import_set_id_groups_sets(sandbox, api):
    s = api(sandbox)
    url = f"{sandbox.url}/api/now/import/{HR}/insertMultiple"
    first = s.post(url, json={"records": [_user("000700")]}).json()
    second = s.post(
        url, params={"multi_import_set_id": first["multi_import_set_id"]}, json={"records": [_user("000701")]}
    ).json()
    assert second["multi_import_set_id"] == first["multi_import_set_id"]
    sets = s.get(
        f"{sandbox.url}/api/now/table/sys_import_set",
        params={"sysparm_query": f"multi_import_set={first['multi_import_set_id']}"},
    ).json()["result"]
    assert len(sets) == 2


ENVELOPE_KEYS = {"error", "status"}


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"Content-Type": "text/plain"}, b'{"records": []}', 415, "Unsupported Media Type"),
        ({}, b'{"records": []}', 400, "Missing Content-Type header"),
        ({"Content-Type": "application/json"}, b"{not json", 400, "Exception while reading request"),
        ({"Content-Type": "application/json"}, b'{"rows": []}', 400, "Invalid request body"),
        (
            {"Content-Type": "application/json", "Accept": "text/html"},
            b'{"records": []}',
            406,
            "Not Acceptable",
        ),
    ],
)
def test_bad_requests_get_the_error_envelope(sandbox, api, headers, body, status, message):
    s = api(sandbox)
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", data=body, headers=headers)
    assert r.status_code == status
    assert set(r.json()) == ENVELOPE_KEYS
    assert r.json()["status"] == "failure"
    assert r.json()["error"]["message"] == message


def test_unknown_staging_table_is_400(sandbox, api):
    r = api(sandbox).post(f"{sandbox.url}/api/now/import/u_nope/insertMultiple", json={"records": []})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Invalid table u_nope"


def test_oversize_body_is_413(make_sandbox, api):
    data = two_map_data()
    data["instance"]["max_content_length_bytes"] = 2000
    srv = make_sandbox(data)
    s = api(srv)
    big = {"records": [{"Code": str(i), "Name": "x" * 10} for i in range(200)]}
    r = s.post(f"{srv.url}/api/now/import/u_people_import/insertMultiple", json=big)
    assert r.status_code == 413
    assert "too large" in r.json()["error"]["message"]
    assert r.json()["status"] == "failure"
    # Without Content-Length (chunked), too.
    chunks = iter([json.dumps(big).encode()])
    r = s.post(
        f"{srv.url}/api/now/import/u_people_import/insertMultiple",
        data=chunks,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert srv.counters()["rows_received"] == 0


def test_missing_or_bad_credentials_are_401(sandbox):
    for auth in (None, ("svc.import", "wrong"), ("nobody", "x")):
        r = requests.post(
            f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": []}, auth=auth
        )
        assert r.status_code == 401
        assert r.json() == {
            "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
            "status": "failure",
        }


def test_a_user_without_the_import_role_is_403(sandbox, api):
    for user in (d.NO_ROLES_USER, d.ITIL_USER):
        r = api(sandbox, user).post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": []})
        assert r.status_code == 403
        assert r.json()["error"]["message"] == "User Not Authorized"
    assert (
        api(sandbox, d.ADMIN_USER)
        .post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": []})
        .status_code
        == 201
    )


def test_unknown_resource_and_method(sandbox, api):
    s = api(sandbox)
    r = s.get(f"{sandbox.url}/api/now/nothing/here")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "Requested URI does not represent any resource"
    r = s.delete(f"{sandbox.url}/api/now/import/{HR}/insertMultiple")
    assert r.status_code == 405
