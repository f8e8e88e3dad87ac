"""kill -9 at several points of a multi-batch file, then a restart: every row reaches the target
once, with the right value, and has exactly one final result in the ledger."""

from __future__ import annotations

from typing import Any

import pytest

from tests.daemon.conftest import DaemonHost
from tests.daemon.users_file import USERS, users_csv
from tests.instance import default_data
from tests.waiting import wait_until

ROWS = 50  # five batches of ten


def slow_transform_data() -> dict[str, Any]:
    data = default_data()
    data["instance"]["async_transform_delay_ms"] = 6000  # a wide window to die in
    return data


def counters(host: DaemonHost) -> dict[str, Any]:
    return host.server.counters()


@pytest.mark.parametrize(
    "point", ["before_first_post", "between_posts", "instance_holds_answer", "during_polling"]
)
def test_kill_9_then_restart_gives_every_row_exactly_one_result(make_host: Any, point: str) -> None:
    host: DaemonHost = make_host(data=slow_transform_data() if point == "during_polling" else None)
    host.mapping("users", USERS)
    if point == "before_first_post":
        # Every request refused for a while: the daemon has taken and recorded the file but is
        # still backing off before its first post when it dies.
        host.server.set_faults(rate_limit_every=1, rate_limit_retry_after=30, endpoints=["insertMultiple"])
    elif point == "between_posts":
        host.server.set_faults(latency_ms=250, endpoints=["insertMultiple"])
    elif point == "instance_holds_answer":
        host.server.set_faults(latency_ms=1500, endpoints=["insertMultiple"])
    (host.inbox / "users.csv").write_text(users_csv(ROWS, start=200, title="v"))
    host.start()

    if point == "before_first_post":
        wait_until(lambda: counters(host)["faults_injected"]["429"] >= 1, 30, "the first refused post")
        wait_until(lambda: host.status(), 10, "the file to be recorded")
    elif point == "between_posts":
        wait_until(lambda: counters(host)["rows_received"] >= 20, 30, "two batches accepted")
    elif point == "instance_holds_answer":
        # Counted by the instance: it holds the request (1.5 s) when the client dies.
        wait_until(
            lambda: counters(host)["requests"].get("insertMultiple", 0) >= 2, 30, "a second post in flight"
        )
    else:
        wait_until(lambda: any(f["state"] == "transforming" for f in host.status()), 30, "all batches posted")
    host.kill9()
    assert any((host.state / "processing").iterdir()), "the file waits in processing/ for the restart"

    host.server.clear_faults()
    # A real instance finishes a request it holds even when the client died; let it do so.
    wait_until(lambda: counters(host)["requests_in_flight"] == 0, 10, "the instance to finish what it held")
    host.start()
    [file] = host.wait_final(1, timeout=90)

    assert file["state"] == "done", host.logs()
    assert file["rows"] == {"inserted": ROWS}
    entries = host.report(file["id"])
    assert sorted(e["source_row"] for e in entries) == list(range(2, ROWS + 2))  # exactly one result each
    staged = host.table("u_hr_user_import", "u_employee_number>=000200^u_employee_number<=000249")
    duplicates = len(staged) - ROWS
    assert duplicates == 0, f"{duplicates} rows reached the instance twice"
    users = {u["employee_number"]: u for u in host.table("sys_user", "employee_numberSTARTSWITH0002")}
    assert len(users) == ROWS
    assert all(users[f"{200 + i:06d}"]["title"] == f"v{i}" for i in range(ROWS))
