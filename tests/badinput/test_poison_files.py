"""A poison file never takes the daemon down, and a file it died on is not resumed forever."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.badinput.conftest import GuardedHost
from tests.daemon.users_file import USERS, users_csv
from tests.waiting import wait_until


def by_name(files: list[dict]) -> dict[str, dict]:
    return {f["name"]: f for f in files}


def error_note(host: GuardedHost, name: str) -> str:
    return (host.state / "failed" / f"{name}.error.txt").read_text()


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists(), reason="needs setpriv")
def test_an_unreadable_file_is_refused_with_the_fix_and_the_next_file_is_imported(
    make_guarded: Callable[..., GuardedHost],
) -> None:
    host = make_guarded()
    host.mapping("users", USERS)
    before = host.untouched()
    host.start()
    locked = host.inbox / "users-locked.csv"
    locked.write_text(users_csv(3, start=100))
    locked.chmod(0)
    host.wait_final(1)
    (host.inbox / "users-good.csv").write_text(users_csv(3, start=200))
    files = by_name(host.wait_final(2))

    assert files["users-locked.csv"]["state"] == "rejected"
    assert "permission denied" in files["users-locked.csv"]["error"]
    assert "chmod g+r" in files["users-locked.csv"]["error"]
    assert (host.state / "failed" / "users-locked.csv").exists(), "the dropped file is kept"
    assert "chmod g+r" in error_note(host, "users-locked.csv")
    assert files["users-good.csv"]["rows"] == {"inserted": 3}
    assert host.alive(), host.logs()
    assert host.untouched() == before


def test_a_file_the_process_died_on_twice_in_a_row_is_set_aside_at_the_next_start(
    make_guarded: Callable[..., GuardedHost],
) -> None:
    host = make_guarded()
    host.mapping("users", USERS)
    host.server.set_faults(latency_ms=4000, endpoints=["insertMultiple"])
    (host.inbox / "users-poison.csv").write_text(users_csv(30, start=300))
    for attempt in (1, 2):
        host.start()
        wait_until(
            lambda n=attempt: host.server.counters()["requests"].get("insertMultiple", 0) >= n,
            30,
            f"post {attempt} in flight",
        )
        host.kill9()  # as a crash, an out-of-memory kill or the watchdog would
    host.server.clear_faults()
    host.start()
    (host.inbox / "users-good.csv").write_text(users_csv(3, start=400))
    files = by_name(host.wait_final(2, timeout=90))

    poison = files["users-poison.csv"]
    assert poison["state"] == "rejected", host.logs()
    assert "2 times in a row" in poison["error"] and "daemon.max_file_attempts" in poison["error"]
    assert (host.state / "failed" / "users-poison.csv").exists()
    assert files["users-good.csv"]["rows"] == {"inserted": 3}
    assert "attempt 1 of 2" in host.logs()  # the first restart resumed it, as after any kill
    assert host.alive()


@pytest.mark.skipif(os.geteuid() == 0 and not Path("/usr/bin/setpriv").exists(), reason="needs setpriv")
def test_a_file_that_cannot_be_moved_stays_with_its_reason_logged_once(
    make_guarded: Callable[..., GuardedHost],
) -> None:
    host = make_guarded()
    host.mapping("users", USERS)
    locked = host.inbox / "locked"
    locked.mkdir()
    (locked / "users-stuck.csv").write_text(users_csv(2, start=500))
    locked.chmod(0o555)  # its folder may not be written: the file cannot be moved out
    host.write_config(metrics_port=0)
    try:
        host.start()
        wait_until(lambda: "cannot take" in host.logs(), 30, "the refusal to be logged")
        (host.inbox / "users-good.csv").write_text(users_csv(2, start=600))
        [good] = host.wait_final(1)
        host.wait_scans(3)  # several more scans (rescan_s = 1): no new attempt, no new line
        assert good["name"] == "users-good.csv" and good["rows"] == {"inserted": 2}
        assert host.logs().count("cannot take") == 1, host.logs()
        assert "check the permissions" in host.logs()
        assert (locked / "users-stuck.csv").exists()
        assert host.alive()
    finally:
        locked.chmod(0o755)
