"""The sandbox's harsh side (servicenow-notes §11): sessions, keep-alive, 2xx that are not
successes, sets that never finish, ACL-filtered reads, rows it does not store."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time

import requests

from importer.sandbox import defaults as d
from tests.instance import default_data
from tests.waiting import wait_until

HR = "u_hr_user_import"


def record(n: int, **extra: str) -> dict[str, str]:
    return {
        "Employee Number": f"{n:06d}",
        "First Name": f"F{n}",
        "Last Name": f"L{n}",
        "Department": "Finance",
        **extra,
    }


def test_a_session_cookie_is_issued_and_its_requests_are_served_one_at_a_time(sandbox, api) -> None:
    s = api(sandbox)
    first = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    assert first.status_code == 200
    assert "JSESSIONID" in s.cookies
    s.get(f"{sandbox.url}/api/now/table/cmn_department")
    sessions = sandbox.counters()["sessions"]
    assert sessions["count"] == 1  # the cookie was sent back: the same session

    sandbox.set_faults(latency_ms=150)
    cookie = s.cookies["JSESSIONID"]
    started = time.monotonic()
    codes: list[int] = []

    def get() -> None:
        r = requests.get(
            f"{sandbox.url}/api/now/table/cmn_department",
            auth=(d.IMPORT_USER, d.IMPORT_PASSWORD),
            headers={"Accept": "application/json"},
            cookies={"JSESSIONID": cookie},
            timeout=30,
        )
        codes.append(r.status_code)

    threads = [threading.Thread(target=get) for _ in range(14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    # One running, ten waiting: the rest are answered 202 and dropped.
    assert codes.count(202) >= 3, codes
    assert codes.count(200) <= 11
    assert elapsed >= 0.15 * codes.count(200) * 0.9  # served one after another
    assert sandbox.counters()["faults_injected"]["session_overflow"] == codes.count(202)


def test_without_a_cookie_each_request_is_a_new_session_and_parallel_requests_are_not_serialised(
    sandbox,
) -> None:
    sandbox.set_faults(latency_ms=300)
    started = time.monotonic()

    def get() -> None:
        requests.get(
            f"{sandbox.url}/api/now/table/cmn_department",
            auth=(d.IMPORT_USER, d.IMPORT_PASSWORD),
            headers={"Accept": "application/json"},
            timeout=30,
        )

    threads = [threading.Thread(target=get) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 4 * 0.3
    assert sandbox.counters()["sessions"]["count"] == 4


def test_connections_are_kept_alive_and_closed_when_idle(make_sandbox) -> None:
    data = default_data()
    data["instance"]["keepalive_idle_s"] = 0.3
    srv = make_sandbox(data)
    auth = "Basic " + base64.b64encode(f"{d.IMPORT_USER}:{d.IMPORT_PASSWORD}".encode()).decode()
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        for _ in range(3):  # three requests on one connection
            conn.request("GET", "/api/now/table/cmn_department", headers={"Authorization": auth})
            answer = conn.getresponse()
            assert answer.status == 200 and answer.version == 11
            answer.read()
        sock = conn.sock
        assert sock is not None
        # Idle past keepalive_idle_s: the server closes it (the client sees end of stream).
        assert wait_until(lambda: sock.recv(1) == b"", timeout=5)
    finally:
        conn.close()


def test_close_on_reuse_closes_a_reused_connection_without_reading_the_request(sandbox, api) -> None:
    s = api(sandbox)
    s.get(f"{sandbox.url}/api/now/table/cmn_department")
    sandbox.set_faults(close_on_reuse=[1])
    try:
        s.post(
            f"{sandbox.url}/api/now/import/{HR}/insertMultiple",
            json={"records": [record(950)]},
        )
        raise AssertionError("expected the connection to be closed")
    except requests.exceptions.ConnectionError:
        pass
    assert sandbox.counters()["faults_injected"]["closed_on_reuse"] == 1
    assert sandbox.counters()["rows_received"] == 0  # nothing happened


def test_quota_cancellation_answers_200_with_an_error_and_half_a_page(sandbox, api) -> None:
    s = api(sandbox)
    sandbox.set_faults(quota_cancel=[1], endpoints=["table"])
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failure" and "cancelled" in body["error"]["message"]
    assert len(body["result"]) == int(r.headers["X-Total-Count"]) // 2
    sandbox.set_faults(quota_cancel=[1], quota_cancel_body="unparsable", endpoints=["insertMultiple"])
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": [record(951)]})
    assert r.status_code == 200
    try:
        json.loads(r.text)
        raise AssertionError("expected a body that does not parse")
    except ValueError:
        pass
    assert sandbox.counters()["rows_received"] == 1  # committed before it was cancelled


def test_a_202_stores_nothing(sandbox, api) -> None:
    s = api(sandbox)
    sandbox.set_faults(accepted_202=[1])
    r = s.post(f"{sandbox.url}/api/now/import/{HR}/insertMultiple", json={"records": [record(952)]})
    assert r.status_code == 202
    assert sandbox.counters()["rows_received"] == 0


def test_429_without_retry_after(sandbox, api) -> None:
    s = api(sandbox)
    sandbox.set_faults(rate_limit_every=1, rate_limit_headers=False)
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    assert r.status_code == 429
    assert not {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Reset"} & set(r.headers)


def _post(s: requests.Session, url: str, n: int) -> str:
    r = s.post(f"{url}/api/now/import/{HR}/insertMultiple", json={"records": [record(n), record(n + 1)]})
    assert r.status_code == 201, r.text
    return str(r.json()["import_set_id"])


def _state(s: requests.Session, url: str, set_id: str) -> str:
    return str(s.get(f"{url}/api/now/table/sys_import_set/{set_id}").json()["result"]["state"])


def test_chosen_sets_are_cancelled_end_in_error_or_never_transform(sandbox, api) -> None:
    s = api(sandbox, d.ADMIN_USER)
    sandbox.set_faults(
        cancel_import_sets=[1], oncomplete_error_import_sets=[2], untransformed_import_sets=[3]
    )
    cancelled, errored, held = (_post(s, sandbox.url, n) for n in (960, 962, 964))
    wait_until(lambda: _state(s, sandbox.url, cancelled) == "cancelled")
    runs = s.get(
        f"{sandbox.url}/api/now/table/sys_import_set_run", params={"sysparm_query": f"set={cancelled}"}
    )
    assert [r["state"] for r in runs.json()["result"]] == ["Cancelled"]
    wait_until(lambda: _state(s, sandbox.url, errored) == "error")
    later = _post(s, sandbox.url, 966)  # loaded after the held set, at a later scheduler period
    wait_until(lambda: _state(s, sandbox.url, later) == "processed", 10, "a set loaded later to transform")
    assert _state(s, sandbox.url, held) == "loaded"
    sandbox.set_faults(untransformed_import_sets=[])
    wait_until(lambda: _state(s, sandbox.url, held) == "processed")


def test_acl_filtered_reads_keep_counting_the_hidden_rows_and_the_import_get_is_403(sandbox, api) -> None:
    s = api(sandbox, d.ADMIN_USER)
    sandbox.set_faults(acl_filter_table="cmn_department", acl_filter_rows="all", acl_filter_reads=1)
    r = s.get(f"{sandbox.url}/api/now/table/cmn_department")
    assert r.status_code == 200 and r.json()["result"] == [] and int(r.headers["X-Total-Count"]) == 4
    assert len(s.get(f"{sandbox.url}/api/now/table/cmn_department").json()["result"]) == 4  # only 1 read
    set_id = _post(s, sandbox.url, 970)
    row = s.get(f"{sandbox.url}/api/now/table/{HR}", params={"sysparm_query": f"sys_import_set={set_id}"})
    sandbox.set_faults(import_get_403=True)
    r = s.get(f"{sandbox.url}/api/now/import/{HR}/{row.json()['result'][0]['sys_id']}")
    assert r.status_code == 403


def test_rows_over_the_row_size_limit_are_not_stored(make_sandbox, api) -> None:
    data = default_data()
    data["staging_tables"][HR]["columns"]["u_title"]["max_length"] = 20000
    srv = make_sandbox(data)
    s = api(srv, d.ADMIN_USER)
    r = s.post(
        f"{srv.url}/api/now/import/{HR}/insertMultiple",
        json={"records": [record(980), record(981, Title="x" * 8200), record(982)]},
    )
    set_id = r.json()["import_set_id"]
    rows = s.get(f"{srv.url}/api/now/table/{HR}", params={"sysparm_query": f"sys_import_set={set_id}"})
    assert sorted(int(r["sys_import_row"]) for r in rows.json()["result"]) == [0, 2]
    assert srv.counters()["faults_injected"]["rows_not_stored"] == 1


def test_the_single_post_accepts_column_names(sandbox, api) -> None:
    s = api(sandbox)
    r = s.post(
        f"{sandbox.url}/api/now/import/{HR}",
        json={"u_employee_number": "000990", "u_first_name": "Col", "u_last_name": "Names"},
    )
    assert r.status_code == 201
    assert r.json()["result"][0]["status"] == "inserted"
