"""A ledger in trouble, as a user meets it: real SQLite files, a real disk filling up, a port
with nothing behind it, and real ``python -m importer`` processes. Each ends in one line that
names the ledger and says what to do, never a traceback, and never touches the ledger's bytes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from importer.errors import LedgerFull
from importer.ledger import BatchState, FileState, IllegalTransition, Ledger
from importer.ledger.engine import HEAD_REVISION, MIGRATIONS
from importer.ledger.transitions import BATCH_TRANSITIONS, FILE_TRANSITIONS
from tests.commands import run_importer

GUARD_S = 60  # no command here may take longer: a lock wait that never ends fails the test


def importer(*args: str, cwd: Path, ledger: str) -> subprocess.CompletedProcess[str]:
    (cwd / "importer.toml").write_text(f'[instance]\nurl = "sandbox"\n[paths]\nledger = "{ledger}"\n')
    return run_importer(*args, cwd=cwd, timeout=GUARD_S)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _file(ledger: Ledger) -> int:
    return ledger.record_taken_file(
        name="a.csv", relative_path="a.csv", path="/x/a.csv", sha256="s" * 64, size=1
    )


@pytest.mark.parametrize("command", [["status"], ["import", "people.csv"], ["run", "--once"]])
def test_a_corrupt_ledger_is_named_and_left_as_it_is(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "ledger.db"
    garbage = b"this is no database, it was overwritten by a backup tool gone wrong\n" * 64
    path.write_bytes(garbage)
    (tmp_path / "people.csv").write_text("name\nAda\n")
    (tmp_path / "mappings").mkdir()
    (tmp_path / "inbox").mkdir()
    line = one_line(importer(*command, cwd=tmp_path, ledger=f"sqlite:///{path}"))
    assert line.startswith(f"importer: {path} is not a valid ledger database ")
    assert "restore it from the backup, see README Back up" in line
    assert path.read_bytes() == garbage  # never recreated, reset or "repaired"


@pytest.fixture
def locked_ledger(tmp_path: Path) -> Iterator[Path]:
    """A ledger another process holds with BEGIN EXCLUSIVE until the test ends."""
    path = tmp_path / "ledger.db"
    Ledger(f"sqlite:///{path}").close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('holding', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        yield path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(GUARD_S)
        holder.stdout.close()  # type: ignore[union-attr]


def test_a_locked_ledger_says_so_in_one_line(tmp_path: Path, locked_ledger: Path) -> None:
    result = importer("status", cwd=tmp_path, ledger=f"sqlite:///{locked_ledger}?timeout=0.5")
    line = one_line(result)
    assert line.startswith(f"importer: the ledger {locked_ledger} is locked by another process")
    assert "waited 0.5 s" in line and "run this again" in line


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs, filled to the last byte."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip() or 'not root'}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(folder: Path) -> None:
    with (folder / "filler").open("wb", buffering=0) as filler:
        try:
            while filler.write(b"\0" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: full


def test_a_ledger_on_a_full_disk_says_so_in_one_line(tmp_path: Path, full_disk: Path) -> None:
    _fill(full_disk)
    line = one_line(importer("status", cwd=tmp_path, ledger=f"sqlite:///{full_disk}/ledger.db"))
    assert line.startswith(f"importer: the ledger {full_disk}/ledger.db cannot be written: the disk is full")
    assert f"free space on {full_disk}" in line


def test_a_disk_filling_up_under_a_working_ledger_loses_nothing_recorded(full_disk: Path) -> None:
    with Ledger(f"sqlite:///{full_disk}/ledger.db") as ledger:
        first = _file(ledger)
        _fill(full_disk)
        with pytest.raises(LedgerFull, match="the disk is full"):
            for _ in range(1000):
                ledger.mark_rejected(_file(ledger), "x" * 4000)
        (full_disk / "filler").unlink()
        assert ledger.get_file(first) is not None
        assert ledger.get_file(_file(ledger)) is not None  # space back: it goes on


def test_an_unreachable_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+psycopg://importer:s3cret-pw@127.0.0.1:{port}/ledger"
    line = one_line(importer("status", cwd=tmp_path, ledger=url))
    shown = f"postgresql+psycopg://importer:***@127.0.0.1:{port}/ledger"
    assert line.startswith(f"importer: cannot reach the ledger database {shown} (")
    assert "s3cret-pw" not in line


def test_the_transition_tables_name_every_state() -> None:
    assert set(FILE_TRANSITIONS) == set(FileState)
    assert set(BATCH_TRANSITIONS) == set(BatchState)


def test_a_transition_the_table_does_not_list_is_refused_and_changes_nothing(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        ledger.mark_rejected(file_id, "no mapping matches a.csv")
        assert FileState.POSTING not in FILE_TRANSITIONS[FileState.REJECTED]
        with pytest.raises(IllegalTransition, match=f"file {file_id} is rejected; it cannot become posting"):
            ledger.mark_posting(file_id)
        record = ledger.get_file(file_id)
        assert record is not None and record.state == FileState.REJECTED
        assert record.error == "no mapping matches a.csv"

        other = _file(ledger)
        ledger.mark_posting(other)
        batch = ledger.open_batch(other, [2], body_bytes=10, run_after=None, multi_import_set_id=None)
        ledger.park_batch(batch, "503 Service Unavailable", datetime.now(UTC))
        with pytest.raises(IllegalTransition, match=f"batch {batch} is parked; it cannot become posted"):
            ledger.mark_batch_posted(batch, "ISET1", None)
        (parked,) = ledger.batches(other)
        assert parked.state == BatchState.PARKED and parked.import_set_id is None
        assert parked.last_error == "503 Service Unavailable"  # a failure state says why


def test_the_head_revision_the_ledger_checks_is_the_newest_migration() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD_REVISION


def test_a_command_on_an_up_to_date_ledger_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    Ledger(url).close()  # new: migrated (alembic runs)
    probe = (
        "import sys\n"
        "from importer.ledger import Ledger\n"
        f"Ledger({url!r}).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=GUARD_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
