"""The file-system edge on real temporary folders: scan, settle, take, archive, fail, report."""

from __future__ import annotations

import csv
import errno
import hashlib
import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

from importer import inbox as inbox_mod
from importer.inbox import (
    Candidate,
    FileChangedError,
    SettleTracker,
    archive_file,
    ensure_private_dirs,
    excel_safe,
    fail_file,
    file_sha256,
    is_ignored,
    safe_name,
    scan_inbox,
    take_file,
    write_report,
)
from tests.waiting import wait_until


def _drop(path: Path, content: bytes = b"a,b\n1,2\n", mtime_s: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime_s is not None:
        os.utime(path, (mtime_s, mtime_s))
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    _drop(folder / "secret.csv", b"not yours\n")
    return folder


# --- ignored names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [".hidden.csv", ".~lock.x.csv#", "~$Book.xlsx", "x.tmp", "X.TMP", "big.csv.part", "a.crdownload"]
)
def test_temporary_and_hidden_names_are_ignored(name: str) -> None:
    assert is_ignored(name)


@pytest.mark.parametrize("name", ["hr_users.csv", "Book.xlsx", "data.json", "tmp.csv", "part1.csv"])
def test_ordinary_names_are_not_ignored(name: str) -> None:
    assert not is_ignored(name)


# --- scanning --------------------------------------------------------------------------------------


def test_scan_finds_top_level_and_mapping_folder_files_in_arrival_order(inbox: Path) -> None:
    _drop(inbox / "b.csv", mtime_s=1_700_000_300)
    _drop(inbox / "a.csv", mtime_s=1_700_000_300)
    _drop(inbox / "departments" / "x.csv", mtime_s=1_700_000_100)
    _drop(inbox / "first.json", mtime_s=1_700_000_000)

    found = scan_inbox(inbox)

    assert [c.relative for c in found] == [
        PurePosixPath("first.json"),
        PurePosixPath("departments/x.csv"),
        PurePosixPath("a.csv"),  # same mtime: by name
        PurePosixPath("b.csv"),
    ]
    x = found[1]
    assert x.path == inbox / "departments" / "x.csv"
    assert x.size == len(b"a,b\n1,2\n")
    assert x.mtime_ns == 1_700_000_100 * 10**9


def test_scan_skips_ignored_names_deeper_folders_and_special_files(inbox: Path) -> None:
    _drop(inbox / "~$Book.xlsx")
    _drop(inbox / "upload.csv.part")
    _drop(inbox / ".DS_Store")
    _drop(inbox / ".hidden_folder" / "x.csv")
    _drop(inbox / "departments" / ".x.csv.swp")
    _drop(inbox / "departments" / "deeper" / "x.csv")
    os.mkfifo(inbox / "pipe.csv")
    _drop(inbox / "ok.csv")

    assert [str(c.relative) for c in scan_inbox(inbox)] == ["ok.csv"]


def test_a_missing_inbox_is_an_error_for_the_caller(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan_inbox(tmp_path / "nowhere")


def test_symlinks_to_files_and_folders_outside_are_never_followed(
    inbox: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (inbox / "link.csv").symlink_to(outside / "secret.csv")
    (inbox / "linked_folder").symlink_to(outside, target_is_directory=True)
    (inbox / "departments").mkdir()
    (inbox / "departments" / "inner.csv").symlink_to(outside / "secret.csv")
    _drop(inbox / "real.csv")

    with caplog.at_level(logging.WARNING, logger="importer.inbox"):
        assert [str(c.relative) for c in scan_inbox(inbox)] == ["real.csv"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3
    assert all("symbolic link" in m for m in warned)

    # Reported once, not on every rescan...
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="importer.inbox"):
        scan_inbox(inbox)
    assert caplog.records == []

    # ...but again if it is removed and dropped again.
    (inbox / "link.csv").unlink()
    scan_inbox(inbox)
    (inbox / "link.csv").symlink_to(outside / "secret.csv")
    with caplog.at_level(logging.WARNING, logger="importer.inbox"):
        scan_inbox(inbox)
    assert len(caplog.records) == 1 and "link.csv" in caplog.records[0].getMessage()


def test_hard_linked_files_are_skipped_with_a_warning(
    inbox: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.link(outside / "secret.csv", inbox / "hard.csv")
    with caplog.at_level(logging.WARNING, logger="importer.inbox"):
        assert scan_inbox(inbox) == []
    assert "hard link" in caplog.text


# --- settling --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cand(name: str, size: int, mtime_ns: int = 1) -> Candidate:
    return Candidate(Path("/inbox") / name, PurePosixPath(name), size, mtime_ns)


def test_a_file_settles_after_settle_s_unchanged_and_is_handed_out_once() -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_s=2, clock=clock)

    assert tracker.observe([_cand("a.csv", 10)]) == []
    clock.now += 1.9
    assert tracker.observe([_cand("a.csv", 10)]) == []
    clock.now += 0.1
    assert tracker.observe([_cand("a.csv", 10)]) == [_cand("a.csv", 10)]
    # Handed out and forgotten: if it is still there (the take failed), its clock starts again.
    clock.now += 5
    assert tracker.observe([_cand("a.csv", 10)]) == []
    clock.now += 2
    assert tracker.observe([_cand("a.csv", 10)]) == [_cand("a.csv", 10)]


def test_a_change_in_size_or_mtime_restarts_the_clock() -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_s=2, clock=clock)
    tracker.observe([_cand("a.csv", 10)])
    clock.now += 1.5
    assert tracker.observe([_cand("a.csv", 20)]) == []  # grew
    clock.now += 1.5
    assert tracker.observe([_cand("a.csv", 20, mtime_ns=2)]) == []  # touched
    clock.now += 1.5
    assert tracker.observe([_cand("a.csv", 20, mtime_ns=2)]) == []
    clock.now += 0.5
    assert tracker.observe([_cand("a.csv", 20, mtime_ns=2)]) == [_cand("a.csv", 20, mtime_ns=2)]


def test_files_that_disappear_are_forgotten() -> None:
    clock = FakeClock()
    tracker = SettleTracker(settle_s=2, clock=clock)
    tracker.observe([_cand("a.csv", 10), _cand("b.csv", 5)])
    clock.now += 1
    assert tracker.observe([_cand("b.csv", 5)]) == []
    clock.now += 1.5
    # a.csv is back: it is new again, while b.csv has settled.
    assert tracker.observe([_cand("a.csv", 10), _cand("b.csv", 5)]) == [_cand("b.csv", 5)]
    clock.now += 2
    assert tracker.observe([_cand("a.csv", 10)]) == [_cand("a.csv", 10)]


def test_settle_zero_hands_out_at_once() -> None:
    assert SettleTracker(settle_s=0, clock=FakeClock()).observe([_cand("a.csv", 1)]) == [_cand("a.csv", 1)]


def test_a_file_written_in_chunks_is_taken_only_after_the_writer_stops(inbox: Path) -> None:
    """Real time: a thread appends for ~0.6 s; with settle_s=0.3 nothing settles until it stops."""
    target = inbox / "slow.csv"
    target.write_bytes(b"h1,h2\n")
    stop_writing = threading.Event()
    finished_at: list[float] = []

    def writer() -> None:
        for i in range(12):
            if stop_writing.wait(0.05):
                break
            with target.open("ab") as f:
                f.write(f"{i},{i}\n".encode())
        finished_at.append(time.monotonic())

    tracker = SettleTracker(settle_s=0.3)
    thread = threading.Thread(target=writer, name="slow-writer")
    thread.start()
    try:
        settled = wait_until(lambda: tracker.observe(scan_inbox(inbox)), 5, "the file to settle")
        settled_at = time.monotonic()
    finally:
        stop_writing.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(settled) == 1
    assert finished_at and settled_at - finished_at[0] >= 0.3 - 0.05
    assert settled[0].size == target.stat().st_size  # the whole file, not a prefix


# --- taking ----------------------------------------------------------------------------------------


def _only(inbox: Path) -> Candidate:
    (candidate,) = scan_inbox(inbox)
    return candidate


def test_take_moves_the_file_into_processing_under_the_id(inbox: Path, tmp_path: Path) -> None:
    processing = tmp_path / "var" / "processing"
    ensure_private_dirs(processing)
    _drop(inbox / "departments" / "hr users.csv", b"x,y\n")
    candidate = _only(inbox)

    taken = take_file(candidate, processing, "f-42")

    assert taken == processing / "f-42-hr users.csv"
    assert taken.read_bytes() == b"x,y\n"
    assert not candidate.path.exists()
    assert taken.stat().st_mtime_ns == candidate.mtime_ns


def test_take_never_overwrites(inbox: Path, tmp_path: Path) -> None:
    processing = tmp_path / "processing"
    processing.mkdir()
    (processing / "f1-a.csv").write_bytes(b"already here")
    _drop(inbox / "a.csv", b"new")

    taken = take_file(_only(inbox), processing, "f1")

    assert taken == processing / "f1-a-1.csv"
    assert (processing / "f1-a.csv").read_bytes() == b"already here"
    assert taken.read_bytes() == b"new"


def test_take_refuses_a_file_that_changed_and_leaves_it_in_place(inbox: Path, tmp_path: Path) -> None:
    processing = tmp_path / "processing"
    processing.mkdir()
    path = _drop(inbox / "a.csv", b"1\n")
    candidate = _only(inbox)
    with path.open("ab") as f:
        f.write(b"2\n")

    with pytest.raises(FileChangedError, match="changed"):
        take_file(candidate, processing, "f1")
    assert path.read_bytes() == b"1\n2\n"
    assert list(processing.iterdir()) == []


def test_take_refuses_a_file_swapped_for_a_symlink(inbox: Path, outside: Path, tmp_path: Path) -> None:
    processing = tmp_path / "processing"
    processing.mkdir()
    path = _drop(inbox / "a.csv", b"not yours\n")
    candidate = _only(inbox)
    path.unlink()
    path.symlink_to(outside / "secret.csv")

    with pytest.raises(FileChangedError):
        take_file(candidate, processing, "f1")
    assert path.is_symlink()
    assert (outside / "secret.csv").read_bytes() == b"not yours\n"


def test_take_of_a_vanished_file_says_so(inbox: Path, tmp_path: Path) -> None:
    path = _drop(inbox / "a.csv")
    candidate = _only(inbox)
    path.unlink()
    with pytest.raises(FileChangedError, match="gone"):
        take_file(candidate, tmp_path, "f1")


def test_take_across_file_systems_copies_fsyncs_then_unlinks(inbox: Path, tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder to exercise EXDEV")
    content = os.urandom(3 * 1024 * 1024 + 17)  # several copy chunks
    source = _drop(inbox / "big.csv", content)
    candidate = _only(inbox)
    processing = shm / f"importer-test-{os.getpid()}-{time.monotonic_ns()}"
    ensure_private_dirs(processing)
    try:
        taken = take_file(candidate, processing, "f7")

        assert taken == processing / "f7-big.csv"
        assert taken.read_bytes() == content
        assert taken.stat().st_mtime_ns == candidate.mtime_ns
        assert _mode(taken) == 0o600
        assert not source.exists()
        assert [p.name for p in processing.iterdir()] == ["f7-big.csv"]  # no temporary left behind
    finally:
        for p in processing.iterdir():
            p.unlink()
        processing.rmdir()


def test_cross_file_system_take_leaves_the_file_when_it_cannot_be_removed(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only share: the copy is undone, the dropped file stays, and the caller hears why."""
    processing = tmp_path / "processing"
    processing.mkdir()
    source = _drop(inbox / "a.csv", b"x\n")
    candidate = _only(inbox)
    real_rename, real_unlink = os.rename, os.unlink

    def rename(src: object, dst: object) -> None:
        if Path(str(src)) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst)  # type: ignore[arg-type]

    def unlink(path: object) -> None:
        if Path(str(path)) == source:
            raise PermissionError(errno.EACCES, "Permission denied")
        real_unlink(path)  # type: ignore[arg-type]

    monkeypatch.setattr(inbox_mod.os, "rename", rename)
    monkeypatch.setattr(inbox_mod.os, "unlink", unlink)

    with pytest.raises(PermissionError):
        take_file(candidate, processing, "f1")
    assert source.read_bytes() == b"x\n"
    assert list(processing.iterdir()) == []


# --- safe names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "",
        "   ",
        "evil\x00.csv",
        "bell\x07\x1b[31m.csv",
        "rtl\u202egpj.csv",
        "x" * 400 + ".csv",
        "é" * 300 + ".xlsx",
        "\udcff-undecodable.csv",
    ],
)
def test_safe_name_cannot_escape_a_folder(name: str, tmp_path: Path) -> None:
    safe = safe_name(name)
    assert safe
    assert "/" not in safe and "\\" not in safe and ".." not in safe
    assert not safe.startswith(".")
    assert all(ord(ch) >= 32 and ch != "\x7f" for ch in safe)
    assert len(safe.encode("utf-8")) <= 200
    assert (tmp_path / safe).parent == tmp_path
    (tmp_path / safe).write_bytes(b"")  # a name the file system accepts


def test_safe_name_keeps_ordinary_names_and_extensions() -> None:
    assert safe_name("hr_users 2024-05.csv") == "hr_users 2024-05.csv"
    assert safe_name("Données RH.xlsx") == "Données RH.xlsx"
    assert safe_name("../../etc/passwd") == "_._etc_passwd"
    long = safe_name("x" * 400 + ".csv")
    assert long.endswith(".csv") and len(long.encode()) == 200
    cut = safe_name("é" * 300 + ".xlsx")
    assert cut.endswith(".xlsx") and len(cut.encode()) <= 200


# --- archive and failed ----------------------------------------------------------------------------


def test_archive_files_by_day_with_private_folders_and_suffixes(tmp_path: Path) -> None:
    archive = tmp_path / "var" / "archive"
    when = datetime(2024, 3, 7, 23, 59, tzinfo=UTC)
    first = archive_file(_drop(tmp_path / "p" / "f1-a.csv", b"1"), archive, when)
    second = archive_file(_drop(tmp_path / "p" / "f1-a.csv", b"2"), archive, when)
    third = archive_file(_drop(tmp_path / "p" / "f1-a.csv", b"3"), archive, when)

    day = archive / "2024" / "03" / "07"
    assert (first, second, third) == (day / "f1-a.csv", day / "f1-a-1.csv", day / "f1-a-2.csv")
    assert [p.read_bytes() for p in (first, second, third)] == [b"1", b"2", b"3"]
    for folder in (archive, archive / "2024", archive / "2024" / "03", day):
        assert _mode(folder) == 0o700


def test_fail_file_moves_it_and_writes_the_reason_next_to_it(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    when = datetime(2024, 3, 7, 9, 30, tzinfo=UTC)
    reason = "No mapping matches 'payroll.csv'. Add a mapping whose match covers it, or rename the file."
    one = fail_file(_drop(tmp_path / "p" / "payroll.csv", b"1"), failed, reason, when=when)
    # The next one with this name must not collide with the file nor its note.
    two = fail_file(_drop(tmp_path / "p" / "payroll.csv", b"2"), failed, "second", when=when)

    assert one == failed / "payroll.csv" and one.read_bytes() == b"1"
    assert two == failed / "payroll-1.csv" and two.read_bytes() == b"2"
    note = (failed / "payroll.csv.error.txt").read_text(encoding="utf-8")
    assert reason in note
    assert "2024-03-07 09:30:00" in note
    assert "drop it into the inbox again" in note
    assert "second" in (failed / "payroll-1.csv.error.txt").read_text(encoding="utf-8")
    assert _mode(failed / "payroll.csv.error.txt") == 0o600
    assert _mode(failed) == 0o700


def test_fail_file_avoids_a_stray_note_of_the_same_name(tmp_path: Path) -> None:
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "a.csv.error.txt").write_text("an old note")
    moved = fail_file(_drop(tmp_path / "a.csv"), failed, "why")
    assert moved == failed / "a-1.csv"
    assert (failed / "a.csv.error.txt").read_text() == "an old note"


# --- reports ---------------------------------------------------------------------------------------


def test_report_defuses_formulas_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "f1-hr.csv"
    dangerous = ["=1+1", "+44 20 7946 0000", "-5", "@SUM(A1:A2)", "\tx", "\rx", "  =HYPERLINK(1)"]
    safe_values = ["plain", "", "a=b", "1-2", "user@example.com"]

    def rows():  # a generator: write_report must not need a list
        for value in dangerous + safe_values:
            yield {"source_row": 2, "message": value, "unused": "ignored"}
        yield {"source_row": None}  # a missing column and None are empty cells

    assert write_report(path, ["source_row", "message"], rows()) == path

    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    with path.open(encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["source_row", "message"]
    messages = [line[1] for line in lines[1:]]
    assert messages[: len(dangerous)] == ["'" + v for v in dangerous]
    assert messages[len(dangerous) : -1] == safe_values
    assert lines[-1] == ["", ""]
    assert _mode(path) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["f1-hr.csv"]  # no temporary left behind


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (None, ""),
        (-5, "'-5"),
        (3, "3"),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        (" @x", "' @x"),
        ("ok", "ok"),
    ],
)
def test_excel_safe_for_single_cells(value: object, cell: str) -> None:
    assert excel_safe(value) == cell


def test_report_replaces_the_previous_one_atomically(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_report(path, ["a"], iter([{"a": "old"}]))
    write_report(path, ["a"], iter([{"a": "new"}]))
    assert "new" in path.read_text(encoding="utf-8-sig")


def test_a_failing_report_leaves_no_temporary_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    write_report(path, ["a"], [{"a": "old"}])

    def broken():
        yield {"a": "1"}
        raise RuntimeError("ledger went away")

    with pytest.raises(RuntimeError):
        write_report(path, ["a"], broken())
    assert "old" in path.read_text(encoding="utf-8-sig")
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]


# --- folders and hashes ----------------------------------------------------------------------------


def test_ensure_private_dirs_creates_0700_and_leaves_existing_folders_alone(tmp_path: Path) -> None:
    existing = tmp_path / "inbox"
    existing.mkdir(mode=0o755)
    os.chmod(existing, 0o2775)
    old_umask = os.umask(0o277)  # even a hostile umask cannot make our folders unusable
    try:
        ensure_private_dirs(tmp_path / "var" / "processing", tmp_path / "var" / "failed", existing)
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "var", tmp_path / "var" / "processing", tmp_path / "var" / "failed"):
        assert _mode(folder) == 0o700
    assert _mode(existing) == 0o2775
    ensure_private_dirs(tmp_path / "var")  # idempotent

    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        ensure_private_dirs(tmp_path / "file" / "sub")


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    content = os.urandom(2 * 1024 * 1024 + 3)
    path = _drop(tmp_path / "x.bin", content)
    assert file_sha256(path) == hashlib.sha256(content).hexdigest()
    assert file_sha256(_drop(tmp_path / "empty", b"")) == hashlib.sha256(b"").hexdigest()
