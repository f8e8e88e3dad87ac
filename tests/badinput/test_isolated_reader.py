"""The reading process: a reader that dies (the kernel's out-of-memory killer, a crash in a C
parser) refuses its file with the reason; a stop abandons it at once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from importer.errors import InputFileError
from importer.isolated import ReadingInterrupted, isolated_rows
from importer.mapping import parse_mapping
from importer.readers.options import ReadLimits
from tests.waiting import processes_with_open, wait_until

SLOW = parse_mapping(
    "slow", {"staging_table": "u_x", "columns": {"Name": {"to": "Name", "pattern": "^(a|aa)+$"}}}, "slow.yaml"
)


def slow_file(tmp_path: Path) -> Path:
    path = tmp_path / "names.csv"
    path.write_text("Name\n" + "".join("a" * 40 + "!\n" for _ in range(400)))  # minutes of backtracking
    return path


def reader_pid() -> int:
    children = [p for p in multiprocessing.active_children() if p.name == "importer-reader"]
    return children[0].pid if children and children[0].pid else 0


def reading(path: Path) -> int:
    """The reading process once it has the file open (0 before)."""
    pid = reader_pid()
    return pid if pid and pid in processes_with_open(path) else 0


def test_a_reader_killed_mid_file_refuses_the_file_saying_so(tmp_path: Path) -> None:
    path = slow_file(tmp_path)
    rows = isolated_rows(path, SLOW, ReadLimits(pattern_timeout_s=0.5))

    def kill_the_reader() -> None:
        pid = wait_until(lambda: reading(path), 20, "the reading process to open the file")
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would, mid-file

    killer = threading.Thread(target=kill_the_reader)
    killer.start()
    try:
        with pytest.raises(InputFileError) as caught:
            next(rows)
    finally:
        killer.join()
    assert "names.csv: the reader failed on this file (the reading process was killed by SIGKILL" in str(
        caught.value
    )


def test_a_stop_abandons_the_reader_at_once(tmp_path: Path) -> None:
    stop = threading.Event()
    path = slow_file(tmp_path)
    rows = isolated_rows(path, SLOW, ReadLimits(pattern_timeout_s=0.5), stop)

    stopped_at: list[float] = []

    def stop_mid_file() -> None:
        try:
            wait_until(lambda: reading(path), 20, "the reading process to open the file")
        finally:
            stopped_at.append(time.monotonic())
            stop.set()

    stopper = threading.Thread(target=stop_mid_file)
    stopper.start()
    try:
        with pytest.raises(ReadingInterrupted):
            next(rows)
        interrupted_at = time.monotonic()
    finally:
        stopper.join()
    assert interrupted_at - stopped_at[0] < 4, "the stop waited for the reader"
    wait_until(lambda: not reader_pid(), 5, "the reading process to end (it was left running)")
