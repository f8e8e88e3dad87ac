"""The HR file and importer's posting path that tests/bench/test_import_speed.py and
test_sandbox_speed.py both measure."""

from __future__ import annotations

import csv
import time
import tracemalloc
from pathlib import Path

from importer.app import runtime
from importer.config import load_config
from importer.sandbox.defaults import IMPORT_PASSWORD, IMPORT_USER

HEADERS = ["Emp ID", "First", "Last", "E-mail", "Phone", "Dept", "Start", "Title"]
LABELS = ["Employee Number", "First Name", "Last Name", "Email", "Phone", "Department", "Start Date", "Title"]
MAPPING = """
staging_table: u_hr_user_import
match: ["bench*"]
batch_rows: 500
columns:
  "Emp ID": {to: "Employee Number", required: true}
  "First": {to: "First Name", strip: true}
  "Last": "Last Name"
  "E-mail": {to: "Email", strip: true, lower: true}
  "Phone": "Phone"
  "Dept": "Department"
  "Start": {to: "Start Date", date: "%d/%m/%Y"}
  "Title": "Title"
"""


def write_csv(path: Path, rows: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(HEADERS)
        for i in range(rows):
            writer.writerow(
                [
                    f"{i:07d}",
                    f"First{i}",
                    f"Last{i}",
                    f"User{i}@Example.com",
                    "+44 20 7946 0000",
                    "Engineering",
                    f"{1 + i % 28:02d}/03/2026",
                    "Engineer",
                ]
            )


def importer_post(root: Path, url: str, path: Path, *, trace: bool = False) -> tuple[float, int]:
    """importer's path for one file, to every batch accepted; returns (seconds, tracemalloc peak)."""
    config_path = root / "importer.toml"
    (root / "mappings").mkdir(exist_ok=True)
    (root / "mappings" / "bench.yaml").write_text(MAPPING)
    config_path.write_text(
        f'[instance]\nurl = "{url}"\nusername = "{IMPORT_USER}"\npassword = "{IMPORT_PASSWORD}"\n'
        f'[paths]\ninbox = "{root}/inbox"\nmappings = "{root}/mappings"\nstate = "{root}/var"\n'
        f'outbox = "{root}/outbox"\n'
    )
    config = load_config(config_path)
    with runtime(config) as rt:
        started = time.perf_counter()
        if trace:
            tracemalloc.start()
        file_id = rt.importer.copy_in(path)
        outcome = rt.importer.process_file(file_id)
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        if trace:
            tracemalloc.stop()
        elapsed = time.perf_counter() - started
        assert outcome.sent == sum(1 for _ in path.open()) - 1
    return elapsed, peak
