"""The dropper's side: what a running daemon (a real subprocess) answers in the outbox."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from pathlib import Path

from markupsafe import escape
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tests.daemon.conftest import REPO, DaemonHost


class _Arrivals(FileSystemEventHandler):
    """How each file came to be under its name in the outbox: renamed into place (atomic), or
    created/written there (a person could open it half-written)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.renamed_into_place: set[str] = set()
        self.written_in_place: set[str] = set()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        with self.lock:
            if event.event_type == "moved":
                self.renamed_into_place.add(os.path.basename(str(event.dest_path)))
            elif event.event_type in ("created", "modified", "closed") and not os.path.basename(
                str(event.src_path)
            ).startswith("."):
                self.written_in_place.add(os.path.basename(str(event.src_path)))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_good_erroneous_and_refused_files_are_answered_in_the_outbox_atomically(host: DaemonHost) -> None:
    # The outbox as deploy/install.sh makes it: setgid, so the drop group owns what is inside.
    host.outbox.mkdir()
    os.chmod(host.outbox, 0o2750)
    (host.outbox / "departments").mkdir()  # exists already: the watcher sees into it from the start
    os.chmod(host.outbox / "departments", 0o2750)
    arrivals = _Arrivals()
    observer = Observer()
    observer.schedule(arrivals, str(host.outbox), recursive=True)
    observer.start()
    try:
        (host.inbox / "departments").mkdir()
        shutil.copy(REPO / "samples" / "departments.csv", host.inbox / "departments" / "depts-march.csv")
        shutil.copy(REPO / "samples" / "hr_users.csv", host.inbox / "hr_users.csv")
        (host.inbox / "holiday-list.csv").write_text("Name,Days\nAda,25\n")  # no mapping matches it
        host.start("--once")
        assert host.wait_exit(90) == 3, host.logs()
    finally:
        observer.stop()
        observer.join(10)

    files = {f["name"]: f for f in host.status()}
    assert {n: f["state"] for n, f in files.items()} == {
        "depts-march.csv": "done",
        "hr_users.csv": "done_with_errors",
        "holiday-list.csv": "rejected",
    }
    depts, users, refused = files["depts-march.csv"], files["hr_users.csv"], files["holiday-list.csv"]

    # inbox/<mapping>/ answers in outbox/<mapping>/; the inbox itself in the outbox itself.
    answered = sorted(str(p.relative_to(host.outbox)) for p in host.outbox.rglob("*") if p.is_file())
    assert answered == sorted(
        [
            f"departments/{depts['id']}-depts-march.csv.report.csv",
            f"departments/{depts['id']}-depts-march.csv.report.html",
            "holiday-list.csv.error.txt",
            f"{users['id']}-hr_users.csv.report.csv",
            f"{users['id']}-hr_users.csv.report.html",
        ]
    ), "a temporary file was left behind, or an answer is missing"

    # Each answer appeared by a rename of a complete file, never written under its own name.
    with arrivals.lock:
        assert {Path(name).name for name in answered} <= arrivals.renamed_into_place
        assert not arrivals.written_in_place & {Path(name).name for name in answered}

    # Readable by the group that may drop files, nobody else; folders keep the setgid bit.
    for name in answered:
        assert _mode(host.outbox / name) == 0o640, name
    assert _mode(host.outbox / "departments") == 0o2750

    # The CSV is the per-row report; the page says what happened and which rows need a person.
    for file in (depts, users):
        folder = host.outbox / "departments" if file is depts else host.outbox
        state_report = host.state / "reports" / f"{file['id']}-{file['name']}.csv"
        assert (folder / f"{file['id']}-{file['name']}.report.csv").read_bytes() == state_report.read_bytes()
    page = (host.outbox / f"{users['id']}-hr_users.csv.report.html").read_text(encoding="utf-8")
    assert "4 of 7 rows done, 3 need a person (2 error, 1 invalid)" in page
    first_error = next(e for e in host.report(users["id"]) if e["state"] == "error")
    assert str(escape(first_error["message"])) in page
    assert page.index("Rows that need a person") < page.index("The other rows")

    # The refusal says the same as the note in var/failed/.
    note = (host.outbox / "holiday-list.csv.error.txt").read_text(encoding="utf-8")
    assert refused["error"].strip() in note
    assert refused["error"].strip() in (host.state / "failed" / "holiday-list.csv.error.txt").read_text()

    # A re-run is answered under its own id, naming the original.
    rerun = host.cli("rerun", str(users["id"]), "--failed-only")
    assert rerun.returncode == 3, rerun.stderr
    [again] = [f for f in host.status() if f["rerun_of"] == users["id"]]
    rerun_page = host.outbox / f"{again['id']}-hr_users.csv.report.html"
    text = rerun_page.read_text(encoding="utf-8")
    assert "Re-run of" in text and f"#{users['id']} hr_users.csv" in text
    assert _mode(rerun_page) == 0o640
    status = host.cli("status")
    assert f"report: {rerun_page}" in status.stdout, status.stdout
