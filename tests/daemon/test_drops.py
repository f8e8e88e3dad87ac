"""Files dropped into the inbox of a running daemon (a real subprocess)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from tests.daemon.conftest import REPO, DaemonHost
from tests.daemon.users_file import USERS, users_csv
from tests.waiting import wait_until

SLOW_WRITE_PAUSE_S = 0.5  # the slow writer's pause between chunks: longer than settle_s, all told


def test_copied_renamed_and_slowly_written_files_are_each_taken_once_when_complete(host: DaemonHost) -> None:
    host.mapping("users", USERS)
    host.write_config(settle_s=1.0)
    host.start()
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")  # by copy
    staged = host.root / "users-renamed.csv"
    staged.write_text(users_csv(25, start=300))
    os.rename(staged, host.inbox / "users-renamed.csv")  # by atomic rename

    content = users_csv(40, start=500).encode()
    chunks = [content[i : i + len(content) // 6 + 1] for i in range(0, len(content), len(content) // 6 + 1)]

    def write_slowly() -> None:  # over ~3 s, longer than settle_s between the first and last byte
        with open(host.inbox / "users-slow.csv", "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                time.sleep(SLOW_WRITE_PAUSE_S)  # part of the scenario, not a wait

    writer = threading.Thread(target=write_slowly)
    writer.start()
    writer.join()
    files = host.wait_final(3)
    by_name = {f["name"]: f for f in files}
    assert set(by_name) == {"departments.csv", "users-renamed.csv", "users-slow.csv"}
    assert by_name["users-slow.csv"]["rows"] == {"inserted": 40}  # the whole file, not a prefix
    assert by_name["users-renamed.csv"]["rows"] == {"inserted": 25}
    assert sorted(p.name for p in host.inbox.iterdir()) == []
    archived = sorted(p.name for p in (host.state / "archive").rglob("*.csv"))
    assert len(archived) == 3


def test_lock_and_temporary_files_are_left_alone(host: DaemonHost) -> None:
    host.mapping("users", USERS)
    host.write_config(metrics_port=0)
    host.start()
    ignored = ["~$users.xlsx", ".users.csv.swp", "users.csv.tmp", "users2.csv.part", "users3.csv.crdownload"]
    for name in ignored:
        (host.inbox / name).write_text(users_csv(2))
    (host.inbox / "users.csv").write_text(users_csv(3))
    files = host.wait_final(1)
    host.wait_scans(2)  # a few more scans: still nothing else taken
    assert [f["name"] for f in host.status()] == ["users.csv"] == [f["name"] for f in files]
    assert sorted(p.name for p in host.inbox.iterdir()) == sorted(ignored)


def test_polling_only_mode_finds_files_without_file_events(host: DaemonHost) -> None:
    host.write_config(watch=False, rescan_s=0.5)
    host.start()
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    [file] = host.wait_final(1)
    assert file["state"] == "done"


def test_run_once_takes_the_inbox_waits_for_results_and_exits_with_the_outcome(host: DaemonHost) -> None:
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
    host.start("--once")
    assert host.wait_exit(60) == 3  # the sample has rows in error and one invalid row
    states = {f["name"]: f["state"] for f in host.status()}
    assert states == {"departments.csv": "done", "hr_users.csv": "done_with_errors"}
    host.start("--once")
    assert host.wait_exit(30) == 0  # nothing new to do


def test_the_same_file_dropped_twice_is_a_duplicate_and_posted_once(host: DaemonHost) -> None:
    host.start()
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    host.wait_final(1)
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments-again.csv")
    files = host.wait_final(2)
    assert [f["state"] for f in files] == ["done", "duplicate"]
    assert len(host.table("sys_import_set", "table_name=u_department_import")) == 1
    assert len(list((host.state / "archive").rglob("departments*.csv"))) == 2  # nothing deleted


def test_a_symlink_in_the_inbox_is_never_followed(host: DaemonHost, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "departments-secret.csv"
    secret.parent.mkdir()
    secret.write_text("Code,Name\nSEC,Secret\n")
    (host.inbox / "departments-link.csv").symlink_to(secret)
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    host.write_config(metrics_port=0)
    host.start()
    host.wait_final(1)
    host.wait_scans(2)  # more scans: the link is still not taken
    assert [f["name"] for f in host.status()] == ["departments.csv"]
    assert (
        secret.read_text() == "Code,Name\nSEC,Secret\n" and (host.inbox / "departments-link.csv").is_symlink()
    )
    assert host.table("cmn_department", "id=SEC") == []


def test_sigterm_mid_file_exits_within_10s_and_a_restart_completes_it(host: DaemonHost) -> None:
    host.mapping("users", USERS)
    host.server.set_faults(latency_ms=300, endpoints=["insertMultiple"])
    (host.inbox / "users.csv").write_text(users_csv(100, start=700))
    host.start()
    wait_until(
        lambda: host.server.counters()["requests"].get("insertMultiple", 0) >= 2, 30, "posting to start"
    )
    assert host.process is not None
    started = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    code = host.wait_exit(15)
    assert time.monotonic() - started < 10
    assert code == 0, host.logs()
    [file] = host.status()
    assert file["state"] == "posting"  # stopped part-way, consistently
    host.server.clear_faults()
    host.start()
    [file] = host.wait_final(1)
    assert file["rows"] == {"inserted": 100}
    assert len(host.table("u_hr_user_import")) == 100  # not a row posted twice


def test_rerun_failed_only_posts_only_the_failed_rows_and_the_report_shows_both_runs(
    host: DaemonHost,
) -> None:
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
    host.start("--once")
    assert host.wait_exit(60) == 3
    hr = next(f for f in host.status() if f["name"] == "hr_users.csv")
    # The data is fixed at the instance: the Marketing department now exists.
    fix = host.root / "departments-fix.csv"
    fix.write_text("Code,Name\nMKT,Marketing\n")
    assert host.cli("import", str(fix)).returncode == 0
    received = host.server.counters()["rows_received"]
    result = host.cli("rerun", str(hr["id"]), "--failed-only", "--json")
    assert result.returncode == 3, result.stderr  # row 6's e-mail is still wrong, row 8 still invalid
    assert (
        host.server.counters()["rows_received"] - received == 2
    )  # rows 6 and 7; invalid row 8 is never sent
    entries = host.report(hr["id"])
    original = [(e["source_row"], e["state"]) for e in entries if e["file_id"] == hr["id"]]
    rerun = [(e["source_row"], e["state"]) for e in entries if e["file_id"] != hr["id"]]
    assert (7, "error") in original
    assert rerun == [(6, "error"), (7, "inserted"), (8, "invalid")]


def test_the_daemon_tells_systemd_it_is_ready_and_pings_the_watchdog(
    host: DaemonHost, tmp_path: Path
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    try:
        host.start(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="600000")
        messages: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            any("READY=1" in m for m in messages) and sum("WATCHDOG=1" in m for m in messages) >= 2
        ):
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages), messages
        assert sum("WATCHDOG=1" in m for m in messages) >= 2, messages
    finally:
        sock.close()


def test_a_second_sigterm_exits_at_once(host: DaemonHost) -> None:
    host.mapping("users", USERS)
    host.server.set_faults(latency_ms=2000, endpoints=["insertMultiple"])
    (host.inbox / "users.csv").write_text(users_csv(30, start=900))
    host.start()
    wait_until(
        lambda: host.server.counters()["requests"].get("insertMultiple", 0) >= 1, 30, "a post in flight"
    )
    assert host.process is not None
    started = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    wait_until(
        lambda: "SIGTERM: finishing the request in flight" in host.logs(), 5, "the first stop to be heard"
    )
    host.process.send_signal(signal.SIGTERM)
    host.wait_exit(10)
    assert time.monotonic() - started < 1.5  # did not wait for the 2 s answer
    host.server.clear_faults()
    # The instance finishes the request it held, as a real one would, before the restart.
    wait_until(lambda: host.server.counters()["requests_in_flight"] == 0, 10, "the held post to commit")
    host.start()
    [file] = host.wait_final(1)
    assert file["rows"] == {"inserted": 30}
    assert len(host.table("u_hr_user_import")) == 30


def test_metrics_show_files_rows_and_retries(host: DaemonHost) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host.write_config(metrics_port=port)
    host.server.set_faults(rate_limit_every=2, rate_limit_retry_after=0.1)
    host.start()
    shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments.csv")
    host.wait_final(1)
    import requests

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'importer_files{state="done"} 1.0' in text
    assert 'importer_rows{state="inserted"} 1.0' in text and 'importer_rows{state="updated"} 1.0' in text
    assert 'importer_http_retries_total{reason="429"}' in text
    assert "importer_last_successful_poll_timestamp_seconds 0.0" not in text


def test_a_mapping_added_while_running_takes_effect_and_a_broken_one_is_ignored(host: DaemonHost) -> None:
    host.start()
    (host.inbox / "users-1.csv").write_text(users_csv(2, start=600))
    [first] = host.wait_final(1)
    assert first["state"] == "rejected" and "no mapping matches" in first["error"]
    (host.root / "mappings" / "broken.yaml").write_text("staging_table: [not, a, name]\n")
    # A rescan: the broken file is reported, the mappings in use are kept.
    wait_until(
        lambda: "not valid; still using the previous ones" in host.logs(), 30, "the broken file reported"
    )
    (host.root / "mappings" / "broken.yaml").unlink()
    host.mapping("users", USERS)
    wait_until(lambda: "mappings reloaded:" in host.logs(), 30, "the next rescan to reload them")
    (host.inbox / "users-2.csv").write_text(users_csv(2, start=610))
    files = host.wait_final(2)
    assert files[1]["state"] == "done" and files[1]["rows"] == {"inserted": 2}
    assert "not valid; still using the previous ones" in host.logs()
    assert host.process is not None and host.process.poll() is None  # it kept going


def test_a_rerun_by_hand_beside_the_running_daemon_is_posted_once(host: DaemonHost) -> None:
    host.mapping("users", USERS.replace("batch_rows: 10", "batch_rows: 5"))
    (host.inbox / "users.csv").write_text(users_csv(100, start=800))
    host.start()
    [original] = host.wait_final(1)
    assert original["rows"] == {"inserted": 100}
    # 20 batches at 300 ms each: the daemon's periodic jobs run while the command posts.
    host.server.set_faults(latency_ms=300, endpoints=["insertMultiple"])
    received = host.server.counters()["rows_received"]
    result = host.cli("rerun", str(original["id"]), "--json")
    assert result.returncode == 0, result.stderr
    assert host.server.counters()["rows_received"] - received == 100  # not a row twice
    files = host.wait_final(2)
    assert files[1]["rerun_of"] == original["id"]
    assert files[1]["rows"] == {"ignored": 100}  # the same values again: nothing changed
    assert host.process is not None and host.process.poll() is None
