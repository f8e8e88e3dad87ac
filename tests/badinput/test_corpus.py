"""The bad-input corpus through the daemon: a real subprocess under a 1 GB address-space limit,
many bad files dropped into one daemon, then a good one. Every bad file must end as the contract
says with a reason a person can act on, the good file must be imported, the daemon must still
be up (never restarted), and nothing outside its folders may change.

The default run drops the whole corpus into one daemon (each case is still checked on its own).
The soak — every case under its own daemon, bigger bombs, hundreds of random files — is

    IMPORTER_SOAK=1 .venv/bin/pytest tests/badinput -s -p no:randomly
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.conftest import GuardedHost
from tests.badinput.corpus import CORPUS_MAPPING, REGEX_BOMB_MAPPING, SOAK, Case, cases, random_files
from tests.waiting import processes_with_open, wait_until

FINAL = {"done", "done_with_errors", "rejected", "duplicate"}
GOOD = "departments-good.csv"
GOOD_CSV = "Code,Name\nGD1,Good one\nGD2,Good two\n"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory:
    """Samples the resident memory of a process and all its descendants (the reading processes)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory")

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            pids, total = [self.pid], 0
            while pids:
                pid = pids.pop()
                total += _rss_kb(pid)
                pids += _children(pid)
            self.peak_kb = max(self.peak_kb, total)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def prepare(host: GuardedHost) -> None:
    for path in host.mappings.glob("*.yaml"):
        path.unlink()
    host.mapping("corpus", CORPUS_MAPPING)
    host.mapping("regexbomb", REGEX_BOMB_MAPPING)
    (host.inbox / "regexbomb").mkdir()


def drop(host: GuardedHost, case: Case) -> None:
    """Write the case beside the inbox, then move it in (as a person's copy tool would)."""
    staging = host.root / "drops"
    staging.mkdir(exist_ok=True)
    path = host.inbox / case.name
    if case.expect is None:
        case.make(path)  # links, folders and FIFOs are made in place
        return
    temporary = staging / Path(case.name).name
    case.make(temporary)
    os.rename(temporary, path)


def messages(host: GuardedHost, file: dict[str, Any]) -> str:
    if file["state"] == "rejected":
        return str(file["error"])
    return "\n".join(str(e["message"]) for e in host.report(file["id"]) if e["message"])


def check_case(host: GuardedHost, case: Case, file: dict[str, Any] | None) -> list[str]:
    """What is wrong with how the case ended ([] when it ended as the contract says)."""
    if case.expect is None:
        wrong = [] if file is None else [f"{case.name!r} was taken ({file['state']})"]
        if not os.path.lexists(host.inbox / case.name):
            wrong.append(f"{case.name!r} is no longer in the inbox")
        return wrong
    if file is None:
        return [f"{case.name!r} was never recorded"]
    if case.expect == "any":
        if file["state"] not in FINAL:
            return [f"{case.name!r} ended {file['state']}"]
        if file["state"] == "rejected" and not str(file["error"]).startswith(Path(case.name).name):
            return [f"{case.name!r}: the refusal does not name the file: {file['error']}"]
        return []
    wrong = []
    if file["state"] != case.expect:
        wrong.append(f"{case.name!r} ended {file['state']}, not {case.expect}: {file['error']}")
    text = messages(host, file) if case.reason else ""  # a report is a command run: only when needed
    wrong += [
        f"{case.name!r}: {phrase!r} not in: {text[:400]}" for phrase in case.reason if phrase not in text
    ]
    if case.rows and file["rows"] != case.rows:
        wrong.append(f"{case.name!r}: rows {file['rows']}, not {case.rows}")
    if file["state"] == "rejected" and not (host.state / "failed" / f"{_stored(case)}.error.txt").exists():
        wrong.append(f"{case.name!r}: no error note in failed/")
    return wrong


def _stored(case: Case) -> str:
    from importer.inbox import safe_name

    return safe_name(Path(case.name).name)


def run_corpus(host: GuardedHost, corpus: list[Case]) -> dict[str, Any]:
    """Drop every case into one running daemon, then the good file; check each; return figures."""
    prepare(host)
    process = host.start()
    started = time.monotonic()
    with PeakMemory(process.pid) as memory:
        for case in corpus:
            drop(host, case)
        # A file replaced while it settles: only the final content is taken, once.
        (host.inbox / "replaced.csv").write_text("Code,Name\nRP1,first\nRP2,first\nRP3,first\n")
        os.replace(
            _write(host.root / "replacement.csv", "Code,Name\nRP9,second\n"), host.inbox / "replaced.csv"
        )
        untouched = host.untouched()
        taken = [c for c in corpus if c.expect is not None]
        host.wait_final(len(taken) + 1, timeout=240)
        (host.inbox / GOOD).write_text(GOOD_CSV)
        files = {f["name"]: f for f in host.wait_final(len(taken) + 2, timeout=120)}
    elapsed = time.monotonic() - started

    wrong = [
        problem for case in corpus for problem in check_case(host, case, files.get(Path(case.name).name))
    ]
    replaced = files.get("replaced.csv")
    if replaced is None or replaced["rows"] != {"inserted": 1}:
        wrong.append(f"replaced.csv: {replaced}")
    assert not wrong, "\n".join(wrong) + "\n" + host.logs()[-4000:]
    assert files[GOOD]["state"] == "done" and files[GOOD]["rows"] == {"inserted": 2}
    assert host.alive(), "the daemon died:\n" + host.logs()[-4000:]
    assert host.runs == 1  # never restarted
    assert host.untouched() == untouched, "something outside the daemon's folders changed"
    log = host.logs()
    assert not any(line.startswith("line FORGED") for line in log.splitlines()), (
        "a file name forged a log line"
    )
    names = {c.name for c in corpus}
    assert "link.csv" not in names or "symbolic link" in log
    assert "hardlink.csv" not in names or "hard link" in log
    refused = sum(1 for f in files.values() if f["state"] == "rejected")
    return {
        "inputs": len(corpus) + 2,
        "refused": refused,
        "imported": sum(1 for f in files.values() if f["state"] in ("done", "done_with_errors")),
        "left_alone": sum(1 for c in corpus if c.expect is None),
        "restarts": host.runs - 1,
        "peak_rss_mb": round(memory.peak_kb / 1024),
        "seconds": round(elapsed),
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.timeout(1200 if SOAK else 120)
def test_the_corpus_through_one_daemon(make_guarded: Callable[..., GuardedHost]) -> None:
    host = make_guarded()
    figures = run_corpus(host, cases(host.outside) + random_files(300 if SOAK else 12))
    print("\nbad-input corpus:", ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="the soak runs with IMPORTER_SOAK=1")
@pytest.mark.parametrize("index", range(len(cases(Path("/nonexistent")))))
def test_each_case_under_its_own_daemon(make_guarded: Callable[..., GuardedHost], index: int) -> None:
    host = make_guarded()
    case = cases(host.outside)[index]
    figures = run_corpus(host, [case])
    print(f"\n{case.name!r}:", ", ".join(f"{k}={v}" for k, v in figures.items()))


def test_a_stop_is_not_kept_waiting_by_a_file_being_read(make_guarded: Callable[..., GuardedHost]) -> None:
    """SIGTERM while a slow file is being read: the daemon exits promptly and the file is read
    again at the next start (it is not refused for having been interrupted)."""
    host = make_guarded()
    prepare(host)
    host.mapping(
        "slow",
        """
        staging_table: u_department_import
        columns:
          "Code": {to: "Code", required: true}
          "Name": {to: "Name", pattern: "^(a|aa)+$"}
        """,
    )
    host.write_config()
    slow = host.inbox / "slow"
    slow.mkdir()
    rows = "".join(f"SL{i},{'a' * 40}!\n" for i in range(20))  # each row ~0.25 s of backtracking
    (slow / "names.csv").write_text("Code,Name\n" + rows)
    host.start()
    processing = host.state / "processing"
    [taken] = wait_until(
        lambda: processing.is_dir() and list(processing.iterdir()), 30, "the file to be taken"
    )
    assert host.process is not None
    daemon = host.process.pid
    # Into the reading (20 rows x 0.25 s): a reading process, not the daemon itself, has it open.
    wait_until(lambda: processes_with_open(taken) - {daemon}, 30, "a reading process to open the file")
    stopped = time.monotonic()
    host.stop()
    assert host.process is not None and host.process.returncode == 0
    assert time.monotonic() - stopped < 5, "the stop waited for the file's CPU work"
    host.start()
    [file] = host.wait_final(1, timeout=120)
    assert file["state"] == "done_with_errors" and file["rows"] == {"invalid": 20}, file
