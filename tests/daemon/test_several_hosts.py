"""Two daemons sharing one PostgreSQL ledger (two hosts): each takes, posts and finishes its own
files; a host that dies leaves its files to itself, not to the other."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from importer.sandbox import SandboxServer
from tests.daemon.conftest import REPO, DaemonHost
from tests.daemon.users_file import USERS, users_csv
from tests.waiting import wait_until


@pytest.fixture
def two_hosts(tmp_path: Path, pg_ledger_url: str) -> Iterator[tuple[DaemonHost, DaemonHost]]:
    ledger_url = pg_ledger_url
    with SandboxServer() as server:
        hosts = []
        for name in ("alpha", "beta"):
            root = tmp_path / name
            (root / "inbox").mkdir(parents=True)
            shutil.copytree(REPO / "mappings", root / "mappings")
            host = DaemonHost(root, server, ledger_url, {"host_id": f'"{name}"'})
            host.mapping("users", USERS)
            host.write_config()
            hosts.append(host)
        try:
            yield hosts[0], hosts[1]
        finally:
            for host in hosts:
                host.stop()


def test_each_host_finishes_its_own_files_and_leaves_the_others_alone(
    two_hosts: tuple[DaemonHost, DaemonHost],
) -> None:
    alpha, beta = two_hosts
    alpha.server.set_faults(latency_ms=200, endpoints=["insertMultiple"])
    (alpha.inbox / "users-a.csv").write_text(users_csv(60, start=100))
    alpha.start()
    wait_until(lambda: alpha.server.counters()["requests"].get("insertMultiple", 0) >= 2, 30, "alpha posting")
    alpha.kill9()  # alpha dies mid-file
    (beta.inbox / "users-b.csv").write_text(users_csv(30, start=400))
    shutil.copy(REPO / "samples" / "departments.csv", beta.inbox / "departments.csv")
    beta.start()

    def betas_files_done() -> list[dict[str, Any]] | None:
        done = [
            f
            for f in beta.status()
            if f["name"] != "users-a.csv" and f["state"] in ("done", "done_with_errors")
        ]
        return done if len(done) == 2 else None

    files = wait_until(betas_files_done, 60, "beta's two files")
    assert sorted(f["name"] for f in files) == ["departments.csv", "users-b.csv"]
    states = {f["name"]: f["state"] for f in beta.status()}
    assert states["users-a.csv"] == "posting"  # alpha's file waits for alpha, in alpha's processing/
    alpha.server.clear_faults()
    alpha.start()
    final = {f["name"]: f for f in alpha.wait_final(3)}
    assert final["users-a.csv"]["rows"] == {"inserted": 60}
    assert final["users-b.csv"]["rows"] == {"inserted": 30}
    assert len(alpha.table("u_hr_user_import")) == 90  # nothing posted twice by either host
    assert list((alpha.state / "archive").rglob("users-a.csv"))
    assert list((beta.state / "archive").rglob("users-b.csv"))
