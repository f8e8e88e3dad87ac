"""Reader speed: importer's Excel reader against python-calamine; stdlib csv against pandas.

    .venv/bin/pytest tests/bench/test_reader_speed.py -m bench -s            # 3,000 rows
    IMPORTER_BENCH_ROWS=100000 .venv/bin/pytest tests/bench/test_reader_speed.py -m bench -s

Each library is timed turning every cell into the text the import sends (the same
``cell_text`` for both Excel readers), and checked against the Values promises on the same
workbook; peak memory is each reader's peak RSS (VmHWM) in a fresh subprocess (calamine's sheet lives in
Rust memory, which tracemalloc cannot see).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import openpyxl
import pytest
from openpyxl.cell import WriteOnlyCell

from importer.readers import open_source
from importer.readers.excel import cell_text

pytestmark = pytest.mark.bench

ROWS = int(os.environ.get("IMPORTER_BENCH_ROWS", "3000"))
HEADERS = [
    "Emp ID",
    "Name",
    "Phone",
    "Dept",
    "Grade",
    "Salary",
    "Start",
    "Updated",
    "Active",
    "Lookup",
    "Badge",
]


def _row(i: int) -> list[object]:
    return [
        f"{i:06d}",
        f"Person {i}",
        f"+44 20 7946 {i % 10_000:04d}",
        ("HR", "IT", "Sales", "Ops")[i % 4],
        i % 17,
        1000 + i * 0.25,
        dt.date(2020, 1, 1) + dt.timedelta(days=i % 1500),
        dt.datetime(2024, 1, 1, 8, 30) + dt.timedelta(minutes=i),
        i % 2 == 0,
        "=NA()" if i == 0 else "ok",
    ]


@pytest.fixture(scope="module")
def workbook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "large.xlsx"
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Data")
    ws.append(HEADERS)
    for i in range(ROWS):
        badge = WriteOnlyCell(ws, value=i)  # a number shown as 000123: the usual HR employee number
        badge.number_format = "000000"
        ws.append([*_row(i), badge])
    wb.save(path)
    # Excel saves a formula with its cached value; openpyxl cannot, so write the #N/A error in.
    _give_first_formula_an_error_value(path)
    return path


def _give_first_formula_an_error_value(path: Path) -> None:
    staged = path.with_suffix(".tmp")
    path.rename(staged)
    with zipfile.ZipFile(staged) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.startswith("xl/worksheets/sheet"):
                xml = data.decode("utf-8")
                xml = re.sub(
                    r'<c r="J2"[^>]*><f>NA\(\)</f>(?:<v\s*/>|<v></v>)?</c>', _error_cell, xml, count=1
                )
                data = xml.encode("utf-8")
            zout.writestr(item, data)
    staged.unlink()


def _error_cell(_: re.Match[str]) -> str:
    return '<c r="J2" t="e"><f>NA()</f><v>#N/A</v></c>'


def read_with_importer(path: Path) -> list[list[str]]:
    with open_source(path) as source:
        return [list(row.values.values()) for row in source]


def read_with_calamine(path: Path) -> list[list[str]]:
    import python_calamine

    with python_calamine.CalamineWorkbook.from_path(str(path)) as wb:
        rows = wb.get_sheet_by_index(0).iter_rows()
        next(rows)  # header
        return [[cell_text(v) for v in row] for row in rows]


def _timed(read, path: Path) -> tuple[float, list[list[str]]]:
    started = time.perf_counter()
    rows = read(path)
    return time.perf_counter() - started, rows


def _promises(rows: list[list[str]]) -> dict[str, bool]:
    first, second = rows[0], rows[1]
    return {
        "leading zeros (000000)": first[0] == "000000",
        "phone as written": first[2] == "+44 20 7946 0000",
        "integral numbers (no .0)": second[4] == "1",
        "floats shortest (1000.25)": second[5] == "1000.25",
        "dates yyyy-MM-dd": first[6] == "2020-01-01",
        "datetimes with time": first[7] == "2024-01-01 08:30:00",
        "booleans TRUE/FALSE": first[8] == "TRUE" and second[8] == "FALSE",
        "error cells (#N/A)": first[9] == "#N/A",
        "numbers formatted 000000": first[10] == "000000" and second[10] == "000001",
    }


def _peak_rss_mb(reader: str, path: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, reader, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


_RSS_SCRIPT = """
import sys
from pathlib import Path
import openpyxl, python_calamine
from importer.readers import open_source
from importer.readers.excel import cell_text
reader, path = sys.argv[1], Path(sys.argv[2])
if reader == "baseline":
    pass
elif reader == "importer":
    with open_source(path) as source:
        for row in source:
            pass
else:
    with python_calamine.CalamineWorkbook.from_path(str(path)) as wb:
        for row in wb.get_sheet_by_index(0).iter_rows():
            [cell_text(v) for v in row]
# VmHWM, not ru_maxrss: after fork+exec ru_maxrss can report the parent's (pytest's) peak.
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) / 1024)
"""


def test_excel_importer_against_calamine(workbook: Path) -> None:
    pytest.importorskip("python_calamine")
    importer_s, importer_rows = _timed(read_with_importer, workbook)
    calamine_s, calamine_rows = _timed(read_with_calamine, workbook)
    assert len(importer_rows) == len(calamine_rows) == ROWS

    promises = {"importer": _promises(importer_rows), "calamine": _promises(calamine_rows)}
    # Peak RSS of a process that only imports both, then of one that also reads the sheet.
    rss = {name: _peak_rss_mb(name, workbook) for name in ("baseline", "importer", "calamine")}
    size_mb = workbook.stat().st_size / 1e6
    print(f"\nExcel, {ROWS:,} rows x {len(HEADERS)} columns ({size_mb:.1f} MB .xlsx):")
    for name, seconds in (("importer's reader", importer_s), ("python-calamine", calamine_s)):
        key = name.split()[0].replace("python-", "").replace("'s", "")
        broken = [p for p, ok in promises[key].items() if not ok]
        print(
            f"  {name:20} {ROWS / seconds:>10,.0f} rows/s  {seconds:6.2f} s  "
            f"peak RSS +{rss[key] - rss['baseline']:.0f} MB  broken promises: {', '.join(broken) or 'none'}"
        )
    print(f"  calamine is {importer_s / calamine_s:.1f}x faster than importer's reader")

    # The reader importer uses must keep every promise.
    assert all(promises["importer"].values()), promises["importer"]


def test_csv_stdlib_against_pandas(tmp_path: Path) -> None:
    path = tmp_path / "large.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADERS)
        for i in range(ROWS * 5):
            writer.writerow(cell_text(v) for v in _row(i))

    started = time.perf_counter()
    with open_source(path) as source:
        count = sum(1 for _ in source)
    stdlib_s = time.perf_counter() - started
    assert count == ROWS * 5
    print(f"\nCSV, {count:,} rows x {len(HEADERS)} columns ({path.stat().st_size / 1e6:.1f} MB):")
    print(f"  importer (stdlib csv)  {count / stdlib_s:>10,.0f} rows/s  {stdlib_s:6.2f} s")

    try:
        import pandas as pd  # type: ignore[import-untyped]
    except ImportError:
        print("  pandas not installed: no comparison")
        return
    started = time.perf_counter()
    seen = 0
    for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=10_000):
        for record in chunk.to_dict("records"):
            seen += 1
            assert isinstance(record["Emp ID"], str)
    pandas_s = time.perf_counter() - started
    assert seen == count
    print(f"  pandas (dtype=str)     {count / pandas_s:>10,.0f} rows/s  {pandas_s:6.2f} s")
    print(f"  pandas/stdlib time ratio {pandas_s / stdlib_s:.2f}")


def test_json_reading_speed(tmp_path: Path) -> None:
    path = tmp_path / "large.json"
    records = ROWS * 5
    with path.open("w", encoding="utf-8") as f:
        f.write('{"data": {"employees": [\n')
        f.write(
            ",\n".join(
                json.dumps(
                    {"id": f"{i:06d}", "name": f"Person {i}", "salary": 1000.25, "address": {"city": "Paris"}}
                )
                for i in range(records)
            )
        )
        f.write("]}}")
    from importer.readers import JsonOptions

    started = time.perf_counter()
    with open_source(path, json=JsonOptions(records="data.employees")) as source:
        count = sum(1 for _ in source)
    seconds = time.perf_counter() - started
    assert count == records
    print(f"\nJSON, {count:,} records ({path.stat().st_size / 1e6:.1f} MB): {count / seconds:,.0f} records/s")
