"""Fault injection through the admin endpoint, the Python API and the data file."""

from __future__ import annotations

import time

import pytest
import requests
from sandbox_helpers import rows_of

from importer.sandbox import defaults as d
from tests.waiting import wait_until

HR = "u_hr_user_import"
RECORD = {
    "Employee Number": "000900",
    "First Name": "Fay",
    "Last Name": "Ult",
    "Email": "fay@example.com",
    "Department": "Finance",
}


def _faults(srv, **faults) -> dict:
    r = requests.post(f"{srv.url}/sandbox/admin/faults", json=faults)
    assert r.status_code == 200, r.text
    return r.json()


def test_every_nth_request_is_rate_limited(sandbox, api):
    s = api(sandbox)
    _faults(sandbox, rate_limit_every=3, rate_limit_retry_after=2)
    codes = [s.get(f"{sandbox.url}/api/now/table/cmn_department").status_code for _ in range(6)]
    assert codes == [200, 200, 429, 200, 200, 429]
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "2"
    assert r.headers["X-RateLimit-Limit"] == "3"
    assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert r.headers["X-RateLimit-Rule"]
    assert r.json()["error"]["message"] == "Rate limit exceeded"
    assert r.json()["status"] == "failure"
    # OAuth and admin are never faulted.
    token = requests.post(
        f"{sandbox.url}/oauth_token.do",
        data={
            "grant_type": "password",
            "client_id": d.OAUTH_CLIENT_ID,
            "client_secret": d.OAUTH_CLIENT_SECRET,
            "username": d.IMPORT_USER,
            "password": d.IMPORT_PASSWORD,
        },
    )
    assert token.status_code == 200
    assert sandbox.counters()["faults_injected"]["429"] == 3
    requests.delete(f"{sandbox.url}/sandbox/admin/faults")
    assert requests.get(f"{sandbox.url}/sandbox/admin/faults").json() == {}


def test_token_bucket_rate(sandbox, api):
    s = api(sandbox)
    sandbox.set_faults(rate_limit_per_s=2)
    codes = [s.get(f"{sandbox.url}/api/now/table/cmn_department").status_code for _ in range(5)]
    assert codes[:2] == [200, 200]
    assert 429 in codes
    sandbox.clear_faults()
    assert s.get(f"{sandbox.url}/api/now/table/cmn_department").status_code == 200


def test_faults_restricted_to_endpoint_kinds(sandbox, api):
    s = api(sandbox)
    _faults(sandbox, rate_limit_every=1, endpoints=["insertMultiple"])
    assert s.get(f"{sandbox.url}/api/now/table/cmn_department").status_code == 200
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": [RECORD]})
    assert r.status_code == 429
    assert sandbox.counters()["rows_received"] == 0


def test_503_fraction_is_seeded(make_sandbox, api):
    runs = []
    for _ in range(2):
        srv = make_sandbox()
        s = api(srv)
        srv.set_faults(error_503_fraction=0.5, seed=11)
        codes = [s.get(f"{srv.url}/api/now/table/cmn_department").status_code for _ in range(20)]
        runs.append(codes)
        assert srv.counters()["faults_injected"]["503"] == codes.count(503)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}
    r = None
    srv.set_faults(error_503_fraction=1)
    r = s.get(f"{srv.url}/api/now/table/cmn_department")
    assert r.status_code == 503
    assert r.json()["status"] == "failure"


def test_latency(sandbox, api):
    s = api(sandbox)
    sandbox.set_faults(latency_ms=150)
    started = time.monotonic()
    assert s.get(f"{sandbox.url}/api/now/table/cmn_department").status_code == 200
    assert time.monotonic() - started >= 0.15


def test_outage_refuses_connections_then_comes_back(sandbox, api):
    s = api(sandbox)
    url = f"{sandbox.url}/api/now/table/cmn_department"
    assert s.get(url).status_code == 200
    _faults(sandbox, outage_s=0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(url, auth=s.auth, timeout=2)
    wait_until(lambda: _reachable(url, s.auth), timeout=5)
    assert s.get(url).status_code == 200
    assert sandbox.counters()["faults_injected"]["outage"] == 1


def _reachable(url: str, auth) -> bool:
    try:
        return requests.get(url, auth=auth, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_drop_after_commit(sandbox, api):
    s = api(sandbox)
    _faults(sandbox, drop_after_commit=[2])
    url = f"{sandbox.url}/api/now/import/{HR}/insertMultiple"
    assert s.post(url, json={"records": [RECORD]}).status_code == 201
    with pytest.raises(requests.ConnectionError):
        s.post(url, json={"records": [{**RECORD, "Employee Number": "000901"}]})
    assert s.post(url, json={"records": [{**RECORD, "Employee Number": "000902"}]}).status_code == 201
    assert sandbox.wait_idle(5)
    # The dropped request's import set exists and was transformed.
    sets = s.get(
        f"{sandbox.url}/api/now/table/sys_import_set",
        params={"sysparm_query": f"table_name={HR}^ORDERBYnumber"},
    ).json()["result"]
    assert len(sets) == 3
    [row] = rows_of(s, HR, sets[1]["sys_id"])
    assert (row["u_employee_number"], row["sys_import_state"]) == ("000901", "inserted")
    assert sandbox.counters()["faults_injected"]["dropped"] == 1


def test_faults_from_the_data_file(make_sandbox, api):
    srv = make_sandbox(
        {
            "users": [{"user_name": "a", "password": "b", "roles": ["admin"]}],
            "faults": {"rate_limit_every": 1},
        }
    )
    s = api(srv, "a", "b")
    assert s.get(f"{srv.url}/api/now/table/sys_import_set").status_code == 429


def test_bad_fault_keys_are_400(sandbox):
    r = requests.post(f"{sandbox.url}/sandbox/admin/faults", json={"rate_limit_evry": 3})
    assert r.status_code == 400
    assert "rate_limit_evry" in r.json()["error"]


def test_counters_count_requests_by_kind(sandbox, api):
    s = api(sandbox)
    s.get(f"{sandbox.url}/api/now/table/cmn_department")
    s.get(f"{sandbox.url}/api/now/stats/cmn_department")
    s.post(f"{sandbox.url}/api/now/import/u_department_import", json={"Code": "C", "Name": "C"})
    counters = requests.get(f"{sandbox.url}/sandbox/admin/counters").json()
    assert counters["requests"] == {"table": 1, "stats": 1, "import": 1}
    assert counters["rows_received"] == counters["rows_transformed"] == 1
    assert {"429", "503", "dropped", "outage", "quota_cancel", "accepted_202", "session_overflow"} <= set(
        counters["faults_injected"]
    )
    assert counters == sandbox.counters()
