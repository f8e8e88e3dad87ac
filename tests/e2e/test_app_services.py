"""`kind: app_service` files end to end: the sample file and mapping against the sandbox's CMDB,
over real HTTP, with the CLI as a user runs it."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from importer.sandbox.defaults import ADMIN_PASSWORD, ADMIN_USER, NO_APP_SERVICE_PASSWORD, NO_APP_SERVICE_USER
from tests.e2e.conftest import REPO, Workspace

PAY_WEB, PAY_APP, PAY_DB = (f"7c1f3a40db54101037740f95ca961b0{i}" for i in (1, 2, 3))
MAIL_RELAYS = {"7c1f3a40db54101037740f95ca961b04", "7c1f3a40db54101037740f95ca961b05"}
SHARED_LINUX = "7c1f3a40db54101037740f95ca961b06"
PAYROLL_APP = "658c7620db54101037740f95ca9619f3"
EMAIL_EAST = "f809cb60db94101037740f95ca96190f"
HEADER = "Service,Environment,Version,Business apps,CI group,Parent CI,CI,CI class\n"


def api(ws: Workspace, path: str, **params: str) -> Any:
    response = requests.get(
        f"{ws.server.url}/api/now/{path}",
        params=params,
        auth=(ADMIN_USER, ADMIN_PASSWORD),
        headers={"Accept": "application/json"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def find(ws: Workspace, name: str) -> list[dict[str, Any]]:
    return list(api(ws, "cmdb/csdm/app_service/find_service", name=name)["result"]["services"])


def content(ws: Workspace, sys_id: str) -> tuple[set[tuple[str, str]], set[str]]:
    body = api(ws, f"cmdb/app_service/{sys_id}/getContent")
    pairs = {(r["parent"], r["child"]) for r in body["service"]["service_relations"]}
    return pairs, {i["values"]["sys_id"] for i in body["cmdb"]["items"]}


def report(ws: Workspace, file_id: int) -> dict[int, dict[str, Any]]:
    result = ws.cli("report", str(file_id), "--format", "json")
    assert result.code == 0, result.output
    entries = json.loads(result.stdout)
    assert len(entries) == len({e["source_row"] for e in entries}), "one entry per source row"
    return {e["source_row"]: e for e in entries}


def test_the_sample_registers_updates_ignores_relates_both_ways_and_names_what_is_wrong(
    workspace: Workspace,
) -> None:
    result = workspace.cli("import", str(REPO / "samples" / "services.csv"), "--json")
    assert result.code == 3, result.output  # one row in error, two invalid
    [summary] = json.loads(result.stdout)
    assert summary["state"] == "done_with_errors"
    assert summary["rows"] == {"ignored": 1, "updated": 1, "inserted": 5, "error": 1, "invalid": 2}

    rows = report(workspace, summary["id"])
    assert len(rows) == 10  # every data row of the sample, exactly once
    assert (rows[2]["state"], rows[2]["message"]) == ("ignored", "No field values changed")
    assert rows[2]["target_sys_id"] == EMAIL_EAST
    assert (rows[3]["state"], rows[3]["message"]) == ("updated", "changed: version")
    [payroll] = find(workspace, "Payroll")
    for n in (4, 5, 6):
        assert rows[n]["state"] == "inserted"
        assert rows[n]["target_table"] == "cmdb_ci_service_auto"
        assert rows[n]["target_sys_id"] == payroll["sys_id"]
        assert rows[n]["display_value"] == "Payroll"
    assert payroll["relationships"]["business_app"] == [PAYROLL_APP]
    assert (payroll["environment"], payroll["version"]) == ("Production", "3.4")
    # CI relations through create: an entry point and a chain below it.
    pairs, _ = content(workspace, payroll["sys_id"])
    assert {("", PAY_WEB), (PAY_WEB, PAY_APP), (PAY_APP, PAY_DB)} <= pairs
    # ... and through populate_service from a CMDB group.
    [relay] = find(workspace, "Mail Relay")
    assert rows[7]["state"] == "inserted"
    assert content(workspace, relay["sys_id"])[1] == MAIL_RELAYS
    # A bad CI reference is that row's error, naming it; the service's other row is unaffected.
    [intranet] = find(workspace, "Intranet")
    assert rows[8]["state"] == "inserted"
    assert content(workspace, intranet["sys_id"])[0] == {("", SHARED_LINUX)}  # by class: the Linux one
    assert rows[9]["state"] == "error"
    assert rows[9]["message"] == "CI 'web-99' not found in cmdb_ci"
    # Conflicting values across one service's rows: those rows invalid, the conflict named.
    assert rows[10]["state"] == rows[11]["state"] == "invalid"
    assert "environment is 'Production' on row 10 but 'Test' on row 11" in rows[10]["message"]
    assert find(workspace, "Billing") == []
    assert find(workspace, "HR Portal")[0]["version"] == "2.1"

    # The same services again, as they now are: nothing changes, nothing is registered twice.
    again = workspace.file(
        "services-again.csv",
        HEADER
        + "Payroll,Production,3.4,Payroll,,,pay-web-01,\n"
        + "Payroll,,,,,pay-web-01,pay-app-01,\n"
        + "Mail Relay,Production,1.0,Email,Mail relays,,,\n",
    )
    result = workspace.cli("import", str(again), "--json")
    assert result.code == 0, result.output
    assert json.loads(result.stdout)[0]["rows"] == {"ignored": 3}
    assert len(find(workspace, "Payroll")) == 1
    assert content(workspace, payroll["sys_id"])[0] == pairs  # nothing taken away either


def test_a_fixed_ci_and_rerun_failed_only_completes_the_file(workspace: Workspace) -> None:
    path = workspace.file(
        "services.csv",
        HEADER + "Wiki,Production,1.0,,,,pay-web-01,\nWiki,,,,,pay-web-01,wiki-db-01,\n",
    )
    result = workspace.cli("import", str(path), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["rows"] == {"inserted": 1, "error": 1}
    assert report(workspace, summary["id"])[3]["message"] == "CI 'wiki-db-01' not found in cmdb_ci"

    store = workspace.server.store  # the CMDB team adds the missing CI
    with store.lock:
        wiki_db = store.system_insert("cmdb_ci", name="wiki-db-01", sys_class_name="cmdb_ci_database")

    result = workspace.cli("rerun", str(summary["id"]), "--failed-only", "--json")
    assert result.code == 0, result.output
    [rerun] = json.loads(result.stdout)
    assert rerun["rows"] == {"updated": 1}  # the service exists: its relations grew
    [wiki] = find(workspace, "Wiki")
    assert content(workspace, wiki["sys_id"])[0] == {("", PAY_WEB), (PAY_WEB, wiki_db)}


def test_a_user_without_app_service_admin_is_told_which_role_is_missing(workspace: Workspace) -> None:
    workspace.write_config(username=NO_APP_SERVICE_USER, password=NO_APP_SERVICE_PASSWORD)
    path = workspace.file("services.csv", HEADER + "Wiki,Production,1.0,,,,,\n")
    result = workspace.cli("import", str(path))
    assert result.code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if "app_service_admin" in line]
    assert lines, result.output
    assert f"user '{NO_APP_SERVICE_USER}' lacks the app_service_admin role" in lines[0]
    assert "Traceback" not in result.output
    assert NO_APP_SERVICE_PASSWORD not in result.output
    assert find(workspace, "Wiki") == []


def test_answers_cancelled_by_a_quota_rule_are_retried_and_a_lost_registration_looked_up(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    # servicenow-notes §11: a 200 carrying an error object is not a success. Every third Application
    # Service API answer is one: reads are retried, a registration is looked up, not sent again.
    workspace.server.set_faults(quota_cancel=list(range(2, 90, 3)), endpoints=["app_service"])
    result = workspace.cli("import", str(REPO / "samples" / "services.csv"), "--json")
    assert result.code == 3, result.output
    [summary] = json.loads(result.stdout)
    assert summary["rows"] == {"ignored": 1, "updated": 1, "inserted": 5, "error": 1, "invalid": 2}
    assert workspace.server.counters()["faults_injected"]["quota_cancel"] >= 5
    for name in ("Payroll", "Mail Relay", "Intranet"):
        assert len(find(workspace, name)) == 1, f"{name} registered once"
    registrations = workspace.table("cmdb_ci_service_auto", "nameINPayroll,Mail Relay,Intranet")
    assert len(registrations) == 3
    assert "looking the service up" in caplog.text  # a registration's answer was one of them


def test_check_remote_names_the_missing_app_service_admin_role(workspace: Workspace) -> None:
    assert workspace.cli("check", "--remote").code == 0  # svc.import has the role
    workspace.write_config(username=NO_APP_SERVICE_USER, password=NO_APP_SERVICE_PASSWORD)
    result = workspace.cli("check", "--remote")
    assert result.code == 2, result.output
    assert "mapping services: ServiceNow refused find_service" in result.stdout
    assert "lacks the app_service_admin role" in result.stdout
