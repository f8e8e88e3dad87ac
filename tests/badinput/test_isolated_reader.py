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


def test_a_reader_killed_mid_file_refuses_the_file_saying_so(tmp_path: Path) -> None:
    rows = isolated_rows(slow_file(tmp_path), SLOW, ReadLimits(pattern_timeout_s=0.5))

    def kill_the_reader() -> None:
        deadline = time.monotonic() + 20
        while not (pid := reader_pid()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would

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
    rows = isolated_rows(slow_file(tmp_path), SLOW, ReadLimits(pattern_timeout_s=0.5), stop)
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(ReadingInterrupted):
            next(rows)
    finally:
        timer.join()
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while reader_pid() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reader_pid(), "the reading process was left running"
