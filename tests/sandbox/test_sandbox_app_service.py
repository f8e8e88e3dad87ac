"""Application Service API over the default data set's CMDB tables."""

from __future__ import annotations

from importer.sandbox import defaults as d

PEOPLESOFT = "2fce42d80a0a0bb4004af34d7e3984c8"
EMAIL_EAST = "f809cb60db94101037740f95ca96190f"
APACHE03 = "3a2810c20a0a0bb400268337d6e942ca"
ORA01 = "3a307c930a0a0bb400353965d0b8861f"
BUSINESS_APP = "658c7620db54101037740f95ca9619f2"
OFFERING = "069c7e20db54101037740f95ca9619bf"
GROUP = "e809cf60db94101037640f95ca961932"
PAY_WEB = "7c1f3a40db54101037740f95ca961b01"


def test_get_content_shallow_and_full(sandbox, api):
    s = api(sandbox, d.ADMIN_USER)
    r = s.get(f"{sandbox.url}/api/now/cmdb/app_service/{PEOPLESOFT}/getContent", params={"mode": "Shallow"})
    assert r.status_code == 200
    body = r.json()
    assert body["service"]["name"] == "PeopleSoft Portals"
    assert body["service"]["url"] == f"/api/now/table/cmdb_ci_service_discovered/{PEOPLESOFT}"
    pairs = body["service"]["service_relations"]
    assert {"parent": "", "child": APACHE03} in pairs
    assert {"parent": APACHE03, "child": ORA01} in pairs
    items = {i["values"]["sys_id"]: i for i in body["cmdb"]["items"]}
    assert items[ORA01] == {"className": "cmdb_ci_database", "values": {"sys_id": ORA01, "name": "PS ORA01"}}
    full = s.get(f"{sandbox.url}/api/now/cmdb/app_service/{PEOPLESOFT}/getContent", params={"mode": "full"})
    assert "sys_created_on" in full.json()["cmdb"]["items"][0]["values"]
    bad = s.get(f"{sandbox.url}/api/now/cmdb/app_service/{'0' * 32}/getContent")
    assert bad.status_code == 400
    assert bad.json()["status"] == "failure"


def test_create_then_update_a_mapped_service(sandbox, api):
    s = api(sandbox, d.ADMIN_USER)
    body = {
        "name": "myTestAppService",
        "comments": "Passing data",
        "service_relations": [{"parent": "", "child": APACHE03}, {"parent": APACHE03, "child": ORA01}],
    }
    r = s.post(f"{sandbox.url}/api/now/cmdb/app_service/create", json=body)
    assert r.status_code == 200
    result = r.json()["result"]
    assert result["info"] == "2 CIs added to service"
    sys_id = result["url"].rsplit("/", 1)[1]
    assert result["getContentUrl"] == f"/api/now/cmdb/app_service/{sys_id}/getContent"
    content = s.get(f"{sandbox.url}{result['getContentUrl']}").json()
    assert len(content["cmdb"]["items"]) == 2
    record = s.get(f"{sandbox.url}/api/now/table/cmdb_ci_service_discovered/{sys_id}").json()["result"]
    assert record["comments"] == "Passing data"
    again = s.post(
        f"{sandbox.url}/api/now/cmdb/app_service/create",
        json={"name": "myTestAppService", "service_relations": [{"parent": "", "child": ORA01}]},
    )
    assert again.json()["result"]["url"] == result["url"]
    content = s.get(f"{sandbox.url}{result['getContentUrl']}").json()
    assert content["service"]["service_relations"] == [{"parent": "", "child": ORA01}]
    bad = s.post(
        f"{sandbox.url}/api/now/cmdb/app_service/create",
        json={"name": "x", "service_relations": [{"parent": "", "child": "f" * 32}]},
    )
    assert bad.status_code == 400


def test_find_register_populate_and_update_services(sandbox, api):
    s = api(sandbox, d.ADMIN_USER)
    base = f"{sandbox.url}/api/now/cmdb/csdm/app_service"
    found = s.get(f"{base}/find_service", params={"name": "Email_East", "number": "SNSVC0001018"}).json()
    assert found["result"]["services"][0]["sys_id"] == EMAIL_EAST
    assert s.get(f"{base}/find_service").status_code == 400

    r = s.post(
        f"{base}/register_service",
        json={
            "basic_details": {"name": "Test Lab 2", "environment": "Test Lab 2", "version": "1.1.1"},
            "relationships": {"business_app": [BUSINESS_APP], "business_service_offering": [OFFERING]},
        },
    )
    assert r.status_code == 201
    service_id = r.json()["result"]["service_sys_id"]
    assert r.json()["result"]["number"].startswith("SNSVC")
    [service] = s.get(f"{base}/find_service", params={"name": "Test Lab 2"}).json()["result"]["services"]
    assert service["relationships"] == {
        "business_app": [BUSINESS_APP],
        "technical_service_offering": [],
        "business_service_offering": [OFFERING],
    }
    duplicate = s.post(f"{base}/register_service", json={"basic_details": {"name": "test lab 2"}})
    assert duplicate.status_code == 400

    r = s.put(
        f"{base}/{service_id}/populate_service",
        json={"population_method": {"type": "cmdb_group_based", "group_id": GROUP}},
    )
    assert (r.status_code, r.json()) == (200, {"result": {}})
    rels = s.get(
        f"{sandbox.url}/api/now/table/cmdb_rel_ci",
        params={"sysparm_query": f"parent={service_id}", "sysparm_exclude_reference_link": "true"},
    ).json()["result"]
    assert {x["child"] for x in rels} == {APACHE03, ORA01}
    r = s.put(
        f"{base}/{service_id}/populate_service", json={"population_method": {"type": "tag_list", "tags": []}}
    )
    assert r.status_code == 400

    r = s.put(f"{base}/{service_id}/service_details", json={"basic_details": {"environment": "Production"}})
    assert (r.status_code, r.json()) == (200, {"result": {}})
    [service] = s.get(f"{base}/find_service", params={"name": "Test Lab 2"}).json()["result"]["services"]
    assert service["environment"] == "Production"
    assert s.put(f"{base}/{'0' * 32}/service_details", json={}).status_code == 404


def test_app_service_needs_its_role_and_answers_401_with_details(sandbox, api):
    # servicenow-notes.md §11: 401, not 403, and the error object says "details".
    for user, status in ((d.NO_APP_SERVICE_USER, 401), (d.ITIL_USER, 401), (d.IMPORT_USER, 200)):
        r = api(sandbox, user).get(f"{sandbox.url}/api/now/cmdb/app_service/{PEOPLESOFT}/getContent")
        assert r.status_code == status
        if status == 401:
            error = r.json()["error"]
            assert r.json()["status"] == "failure"
            assert "app_service_admin" in error["details"]
            assert "detail" not in error
    assert sandbox.counters()["requests"]["app_service"] == 3


def test_a_registered_service_takes_relations_through_create_and_shows_them_in_get_content(sandbox, api):
    s = api(sandbox, d.IMPORT_USER)
    base = f"{sandbox.url}/api/now/cmdb/csdm/app_service"
    r = s.post(f"{base}/register_service", json={"basic_details": {"name": "Payroll"}})
    service_id = r.json()["result"]["service_sys_id"]
    r = s.post(
        f"{sandbox.url}/api/now/cmdb/app_service/create",
        json={"name": "Payroll", "service_relations": [{"parent": "", "child": PAY_WEB}]},
    )
    assert r.status_code == 200
    assert r.json()["result"]["url"].endswith(f"/cmdb_ci_service_auto/{service_id}")
    content = s.get(f"{sandbox.url}/api/now/cmdb/app_service/{service_id}/getContent").json()
    assert content["service"]["service_relations"] == [{"parent": "", "child": PAY_WEB}]
    assert content["cmdb"]["items"] == [
        {"className": "cmdb_ci_web_server", "values": {"sys_id": PAY_WEB, "name": "pay-web-01"}}
    ]
    bad = s.post(f"{base}/register_service", json={"basic_details": {"name": "x", "version": "v" * 41}})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"] == "version is longer than 40 characters"
