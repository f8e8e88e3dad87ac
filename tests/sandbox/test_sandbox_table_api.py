"""Table API and Aggregate API over real HTTP."""

from __future__ import annotations

import re

import pytest

from importer.sandbox import defaults as d

HR = "u_hr_user_import"


def _load(srv, s, count: int) -> str:
    records = [
        {
            "Employee Number": f"9{i:05d}",
            "First Name": f"F{i}",
            "Last Name": "L",
            "Email": f"p{i}@example.com" if i % 4 else "broken",
            "Department": "Finance",
        }
        for i in range(count)
    ]
    set_id = s.post(f"{srv.url}/api/now/import/{HR}/insertMultiple", json={"records": records}).json()[
        "import_set_id"
    ]
    assert srv.wait_idle(5)
    return set_id


def _links(header: str) -> dict[str, str]:
    return {rel: url for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', header)}


def test_pagination_with_link_and_total_count(sandbox, api):
    s = api(sandbox)
    set_id = _load(sandbox, s, 25)
    url = f"{sandbox.url}/api/now/table/{HR}"
    params = {
        "sysparm_query": f"sys_import_set={set_id}^ORDERBYsys_import_row",
        "sysparm_limit": "10",
        "sysparm_fields": "sys_import_row",
    }
    r = s.get(url, params=params)
    assert r.headers["X-Total-Count"] == "25"
    links = _links(r.headers["Link"])
    assert set(links) == {"first", "next", "last"}
    assert "sysparm_offset=20" in links["last"]
    seen = [x["sys_import_row"] for x in r.json()["result"]]
    while "next" in links:
        r = s.get(links["next"])
        links = _links(r.headers["Link"])
        seen += [x["sys_import_row"] for x in r.json()["result"]]
    assert seen == [str(i) for i in range(25)]
    assert "prev" in links
    r = s.get(url, params={**params, "sysparm_offset": "20"})
    assert [x["sys_import_row"] for x in r.json()["result"]] == ["20", "21", "22", "23", "24"]
    r = s.get(url, params={**params, "sysparm_no_count": "true"})
    assert "X-Total-Count" not in r.headers


def test_encoded_query_operators(sandbox, api):
    s = api(sandbox)
    url = f"{sandbox.url}/api/now/table/cmn_department"

    def ids(query: str) -> list[str]:
        r = s.get(url, params={"sysparm_query": query + "^ORDERBYid", "sysparm_fields": "id"})
        assert r.status_code == 200
        return [x["id"] for x in r.json()["result"]]

    assert ids("id=ENG") == ["ENG"]
    assert ids("id!=ENG") == ["FIN", "HR", "OPS"]
    assert ids("idINHR,OPS") == ["HR", "OPS"]
    assert ids("nameSTARTSWITHFin") == ["FIN"]
    assert ids("nameENDSWITHResources") == ["HR"]
    assert ids("nameLIKEration") == ["OPS"]
    assert ids("nameLIKEeng") == []  # case-sensitive
    assert ids("id>=HR") == ["HR", "OPS"]
    assert ids("id<=FIN") == ["ENG", "FIN"]
    assert ids("id=ENG^ORid=FIN") == ["ENG", "FIN"]
    assert ids("id=ENG^ORid=FIN^name=Finance") == ["FIN"]
    assert ids("nosuchfield=1^id=HR") == ["HR"]  # unknown field: the part is ignored
    assert ids("nameISNOTEMPTY") == ["ENG", "FIN", "HR", "OPS"]
    assert ids("nameISEMPTY") == []
    r = s.get(url, params={"sysparm_query": "ORDERBYDESCname", "sysparm_fields": "name"})
    assert [x["name"] for x in r.json()["result"]] == [
        "Operations",
        "Human Resources",
        "Finance",
        "Engineering",
    ]


def test_references_and_display_values(sandbox, api):
    s = api(sandbox)
    url = f"{sandbox.url}/api/now/table/sys_user"
    q = {"sysparm_query": "employee_number=000043", "sysparm_fields": "department,name,nosuch"}
    [plain] = s.get(url, params=q).json()["result"]
    assert set(plain) == {"department", "name"}
    assert set(plain["department"]) == {"link", "value"}
    assert (
        plain["department"]["link"]
        == f"{sandbox.url}/api/now/table/cmn_department/{plain['department']['value']}"
    )
    [bare] = s.get(url, params={**q, "sysparm_exclude_reference_link": "true"}).json()["result"]
    assert bare["department"] == plain["department"]["value"]
    [shown] = s.get(
        url, params={**q, "sysparm_display_value": "true", "sysparm_exclude_reference_link": "true"}
    ).json()["result"]
    assert shown["department"] == "Operations"
    [both] = s.get(url, params={**q, "sysparm_display_value": "all"}).json()["result"]
    assert both["department"]["display_value"] == "Operations"
    assert both["department"]["value"] == plain["department"]["value"]
    assert "link" in both["department"]
    assert both["name"] == {"display_value": "Grace Hopper", "value": "Grace Hopper"}


def test_staging_target_reference_shows_the_target_display_value(sandbox, api):
    s = api(sandbox)
    set_id = _load(sandbox, s, 2)
    r = s.get(
        f"{sandbox.url}/api/now/table/{HR}",
        params={
            "sysparm_query": f"sys_import_set={set_id}^sys_import_state=inserted",
            "sysparm_fields": "sys_target_sys_id",
            "sysparm_display_value": "all",
        },
    )
    [row] = r.json()["result"]
    assert row["sys_target_sys_id"]["display_value"] == "F1 L"
    assert "/api/now/table/sys_user/" in row["sys_target_sys_id"]["link"]


def test_empty_result_v1_is_404_and_v2_is_200(sandbox, api):
    s = api(sandbox)
    q = {"sysparm_query": "id=NOPE"}
    r = s.get(f"{sandbox.url}/api/now/v1/table/cmn_department", params=q)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "No Record found"
    for prefix in ("/api/now/v2", "/api/now"):
        r = s.get(f"{sandbox.url}{prefix}/table/cmn_department", params=q)
        assert (r.status_code, r.json()) == (200, {"result": []})


def test_unknown_table_and_record(sandbox, api):
    s = api(sandbox)
    r = s.get(f"{sandbox.url}/api/now/table/u_nothing")
    assert r.status_code == 400
    assert r.json() == {"error": {"message": "Invalid table u_nothing", "detail": ""}, "status": "failure"}
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department/{'0' * 32}")
    assert r.status_code == 404
    assert r.json()["status"] == "failure"


def test_sys_dictionary_describes_staging_columns(sandbox, api):
    s = api(sandbox)
    r = s.get(
        f"{sandbox.url}/api/now/table/sys_dictionary",
        params={
            "sysparm_query": f"name={HR}^elementISNOTEMPTY",
            "sysparm_fields": "element,column_label,internal_type,max_length,mandatory",
            "sysparm_exclude_reference_link": "true",
        },
    )
    columns = {c["element"]: c for c in r.json()["result"]}
    assert columns["u_email"] == {
        "element": "u_email",
        "column_label": "Email",
        "internal_type": "string",
        "max_length": "100",
        "mandatory": "false",
    }
    assert columns["u_employee_number"]["column_label"] == "Employee Number"
    assert len(columns) == 9
    everything = s.get(f"{sandbox.url}/api/now/table/sys_dictionary", params={"sysparm_query": f"name={HR}"})
    assert len(everything.json()["result"]) == 10  # plus the collection entry with an empty element


def test_transform_maps_and_entries(sandbox, api):
    s = api(sandbox)
    [tmap] = s.get(
        f"{sandbox.url}/api/now/table/sys_transform_map", params={"sysparm_query": f"source_table={HR}"}
    ).json()["result"]
    assert (tmap["name"], tmap["target_table"], tmap["order"], tmap["active"]) == (
        "HR users",
        "sys_user",
        "100",
        "true",
    )
    entries = s.get(
        f"{sandbox.url}/api/now/table/sys_transform_entry",
        params={
            "sysparm_query": f"map={tmap['sys_id']}^coalesce=true",
            "sysparm_exclude_reference_link": "true",
        },
    )
    [entry] = entries.json()["result"]
    assert (entry["source_field"], entry["target_field"], entry["map"]) == (
        "u_employee_number",
        "employee_number",
        tmap["sys_id"],
    )


def test_stats_grouped_and_ungrouped(sandbox, api):
    s = api(sandbox)
    set_id = _load(sandbox, s, 8)
    url = f"{sandbox.url}/api/now/stats/{HR}"
    r = s.get(url, params={"sysparm_count": "true", "sysparm_query": f"sys_import_set={set_id}"})
    assert r.json() == {"result": {"stats": {"count": "8"}}}
    r = s.get(
        url,
        params={
            "sysparm_count": "true",
            "sysparm_query": f"sys_import_set={set_id}",
            "sysparm_group_by": "sys_import_state",
        },
    )
    groups = {g["groupby_fields"][0]["value"]: g["stats"]["count"] for g in r.json()["result"]}
    assert groups == {"error": "2", "inserted": "6"}
    assert r.json()["result"][0]["groupby_fields"][0]["field"] == "sys_import_state"


@pytest.mark.parametrize(
    ("user", "table", "status"),
    [
        (d.IMPORT_USER, "sys_import_set", 200),
        (d.ITIL_USER, "sys_import_set", 403),
        (d.ITIL_USER, HR, 403),
        (d.ITIL_USER, "sys_user", 200),
        (d.NO_ROLES_USER, "sys_user", 403),
        (d.ADMIN_USER, "sys_dictionary", 200),
    ],
)
def test_read_roles(sandbox, api, user, table, status):
    s = api(sandbox, user)
    assert s.get(f"{sandbox.url}/api/now/table/{table}").status_code == status
    r = s.get(f"{sandbox.url}/api/now/stats/{table}", params={"sysparm_count": "true"})
    assert r.status_code == status
    if status == 403:
        assert r.json()["error"]["message"] == "User Not Authorized"
