"""No secret anywhere but where the user put it: not in logs, the ledger, reports or error files."""

from __future__ import annotations

import shutil
from typing import Any

from tests.daemon.conftest import REPO, DaemonHost
from tests.instance import default_data

SECRET = "pw-Zq9-unique-7731"
WRONG = "pw-wrong-unique-8842"


def data_with_password() -> dict[str, Any]:
    data = default_data()
    for user in data["users"]:
        if user["user_name"] == "svc.import":
            user["password"] = SECRET
    return data


def test_passwords_reach_no_log_ledger_report_or_error_file(make_host: Any) -> None:
    host: DaemonHost = make_host(data=data_with_password())
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
    (host.inbox / "hr_users-broken.csv").write_text("Nothing;Useful\n1;2\n")  # rejected: no required column

    host.start("--once", IMPORTER_INSTANCE__PASSWORD=WRONG)
    assert host.wait_exit(60) == 1  # refused credentials
    host.start("--once", IMPORTER_INSTANCE__PASSWORD=SECRET)
    assert host.wait_exit(60) == 3
    outputs = [host.cli("status"), host.cli("report", "2"), host.cli("status", "--json")]

    files = [p for p in host.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files) or "postgresql" in host.ledger_url
    assert any(p.name.endswith(".error.txt") for p in files)
    assert any(p.parent.name == "reports" for p in files)
    for path in files:
        content = path.read_bytes()
        assert SECRET.encode() not in content, path
        assert WRONG.encode() not in content, path
    for output in outputs:
        assert SECRET not in output.stdout + output.stderr
    assert "401" in host.logs()  # the refusal itself is logged, without the password
