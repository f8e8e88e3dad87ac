"""kill -9 while the daemon registers application services, then a restart: every service is
registered once, every row has exactly one result, and the relations are all there."""

from __future__ import annotations

from typing import Any

from tests.daemon.conftest import DaemonHost
from tests.instance import count_rows, table_rows
from tests.waiting import wait_until

SERVICES = 12
HEADER = "Service,Environment,Version,Parent CI,CI\n"
PAY_WEB, PAY_APP = "7c1f3a40db54101037740f95ca961b01", "7c1f3a40db54101037740f95ca961b02"


def services_csv() -> str:
    lines = [HEADER]
    for i in range(SERVICES):
        lines.append(f"Crash {i:02d},Production,1.{i},,pay-web-01\n")
        lines.append(f"Crash {i:02d},,,pay-web-01,pay-app-01\n")
    return "".join(lines)


def registered(host: DaemonHost) -> int:
    return count_rows(host.server.url, "cmdb_ci_service_auto", "nameSTARTSWITHCrash ")


def app_service_requests(host: DaemonHost) -> int:
    return int(host.server.counters()["requests"].get("app_service", 0))


def test_kill_9_while_registering_services_then_restart_registers_nothing_twice(make_host: Any) -> None:
    host: DaemonHost = make_host()
    # Every Application Service API answer takes a while: the daemon dies with a service half done
    # (registered, relations not yet sent) or a registration the instance still holds.
    host.server.set_faults(latency_ms=120, endpoints=["app_service"])
    (host.inbox / "services-crash.csv").write_text(services_csv())
    host.start()
    wait_until(lambda: registered(host) >= 4, 60, "four services registered")
    sent = app_service_requests(host)
    wait_until(lambda: app_service_requests(host) > sent, 30, "the next request")  # the instance holds it
    host.kill9()
    assert registered(host) < SERVICES, "the daemon died before it had registered every service"

    host.server.clear_faults()
    # A request the instance held when the client died is finished by it.
    wait_until(lambda: host.server.counters()["requests_in_flight"] == 0, 10, "the held request to finish")
    host.start()
    [file] = host.wait_final(1, timeout=90)

    assert file["state"] == "done", host.logs()
    assert "was interrupted; it is looked up" in host.log_path.read_text(), "a service was cut mid-way"
    assert file["rows"] == {"inserted": 2 * SERVICES}
    entries = host.report(file["id"])
    assert sorted(e["source_row"] for e in entries) == list(range(2, 2 * SERVICES + 2))
    services = table_rows(host.server.url, "cmdb_ci_service_auto", "nameSTARTSWITHCrash ", "sys_id,name")
    names = sorted(s["name"] for s in services)
    assert names == [f"Crash {i:02d}" for i in range(SERVICES)], "every service registered exactly once"
    by_name = {s["name"]: s["sys_id"] for s in services}
    assert {e["target_sys_id"] for e in entries} == set(by_name.values())
    for sys_id in by_name.values():
        relations = {
            (r["parent"], r["child"])
            for r in table_rows(host.server.url, "cmdb_rel_ci", f"parent={sys_id}", "parent,child")
        }
        assert relations == {(sys_id, PAY_WEB)}
    assert count_rows(host.server.url, "cmdb_rel_ci", f"parent={PAY_WEB}^child={PAY_APP}") == 1
