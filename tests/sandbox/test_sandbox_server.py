"""SandboxServer lifecycle, the data file, and the default data set's contract."""

from __future__ import annotations

import threading

import pytest
import requests
import yaml

from importer.sandbox import SandboxDataError, SandboxServer
from importer.sandbox import defaults as d


def test_context_manager_start_and_stop_leave_no_threads():
    before = set(threading.enumerate())
    with SandboxServer() as srv:
        assert srv.url.startswith("http://127.0.0.1:")
        assert requests.get(f"{srv.url}/sandbox/admin/counters").status_code == 200
    assert not [t for t in threading.enumerate() if t not in before]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{srv.url}/sandbox/admin/counters", timeout=1)


def test_banner_is_one_line_with_url_and_credentials(sandbox):
    banner = sandbox.banner()
    assert "\n" not in banner
    assert sandbox.url in banner
    assert f"{d.IMPORT_USER}/{d.IMPORT_PASSWORD}" in banner
    assert f"{d.OAUTH_CLIENT_ID}/{d.OAUTH_CLIENT_SECRET}" in banner


def test_default_data_matches_the_defaults_constants(sandbox):
    for user, password in ((d.IMPORT_USER, d.IMPORT_PASSWORD), (d.ADMIN_USER, d.ADMIN_PASSWORD)):
        r = requests.get(f"{sandbox.url}/api/now/table/sys_user", auth=(user, password))
        assert r.status_code == 200
    users = {
        u["employee_number"]: u
        for u in requests.get(
            f"{sandbox.url}/api/now/table/sys_user",
            auth=(d.ADMIN_USER, d.ADMIN_PASSWORD),
            params={"sysparm_display_value": "true", "sysparm_exclude_reference_link": "true"},
        ).json()["result"]
    }
    assert users["000042"]["name"] == "Ada Lovelace"
    assert users["000042"]["department"] == "Engineering"
    assert (users["000043"]["phone"], users["000043"]["u_start_date"], users["000043"]["source"]) == (
        "+1 555 0100",
        "2020-01-06",
        "HR drop folder",
    )


def test_data_file_from_a_path(tmp_path, make_sandbox):
    path = tmp_path / "data.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "users": [{"user_name": "u", "password": "p", "roles": ["admin"]}],
                "tables": {"t": {"display": "name", "fields": ["name"], "records": [{"name": "one"}]}},
            }
        )
    )
    srv = make_sandbox(path)
    r = requests.get(f"{srv.url}/api/now/table/t", auth=("u", "p"))
    assert [x["name"] for x in r.json()["result"]] == ["one"]


def test_data_file_errors_are_reported_together():
    with pytest.raises(SandboxDataError) as caught:
        SandboxServer(
            {
                "users": [{"user_name": "u"}],
                "tables": {"t": {"display": "nope", "fields": ["a"]}},
                "staging_tables": {
                    "s": {
                        "columns": {"bad": {"label": "B"}},
                        "transform_maps": [{"name": "m", "target": "missing", "field_maps": []}],
                    }
                },
                "surprise": 1,
            }
        )
    problems = caught.value.problems
    assert "users[0].password: required" in problems
    assert any(p.startswith("tables.t.display") for p in problems)
    assert any("staging column names start with 'u_'" in p for p in problems)
    assert any("no table 'missing'" in p for p in problems)
    assert any(p.startswith("(top).surprise") for p in problems)


def test_a_taken_port_is_an_error(sandbox):
    with pytest.raises(OSError):
        SandboxServer(port=sandbox.port).start()
