"""Property tests: any text in a cell arrives in the request body exactly, for CSV, Excel and
JSON; any byte string dropped as a file either imports or is refused cleanly (InputFileError),
never crashing the reader. ``IMPORTER_SOAK=1`` runs many more examples."""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.batching import build_batches
from importer.errors import InputFileError
from importer.isolated import rows_in_process
from importer.mapping import parse_mapping
from importer.readers.options import ReadLimits
from tests.badinput.corpus import SOAK, workbook_bytes

LIMITS = ReadLimits()
MAPPING = parse_mapping(
    "props",
    {"staging_table": "u_props", "csv": {"delimiter": ","}, "columns": {"Code": "Code", "Name": "Name"}},
    "props.yaml",
)
EXAMPLES = settings(
    max_examples=2000 if SOAK else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not SOAK,  # the default run is the same every time; the soak explores
)

# Text a cell may hold: any character but surrogates and the control characters the mapping
# refuses (control_chars: reject) — tab, CR and LF are text.
_char = st.characters(
    blacklist_categories=("Cs",),
    blacklist_characters="".join(chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]),
)
_tricky = st.sampled_from(
    ["000123", "=1+1", "+44 20 7946 0000", '"', '""', "'", "\n", "\r\n", " lead", "trail "]
)
cell_text = st.one_of(
    st.text(_char, max_size=60),
    st.lists(st.one_of(_tricky, st.text(_char, max_size=5)), max_size=8).map("".join),
    st.integers(LIMITS.max_cell_chars - 2, LIMITS.max_cell_chars).map(lambda n: "é" * n),  # the longest
)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def sent(path: Path) -> list[dict[str, str]]:
    """What the request bodies would carry for this file, decoded."""
    rows = list(rows_in_process(path, MAPPING, LIMITS))
    assert all(r.problem is None for r in rows), [r.problem for r in rows]
    records: list[dict[str, str]] = []
    for batch in build_batches(iter(rows), 500, 5_000_000):
        records += json.loads(batch.body)["records"]  # type: ignore[union-attr]
    return records


@EXAMPLES
@given(text=cell_text)
def test_any_cell_text_arrives_exactly_from_csv(folder: Path, text: str) -> None:
    path = folder / "cell.csv"
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows([["Code", "Name"], ["C1", text]])
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    assert sent(path) == [{"Code": "C1", "Name": text}]


@EXAMPLES
@given(text=cell_text)
def test_any_cell_text_arrives_exactly_from_json(folder: Path, text: str) -> None:
    path = folder / "cell.json"
    path.write_text(json.dumps([{"Code": "C1", "Name": text}]), encoding="utf-8")
    assert sent(path) == [{"Code": "C1", "Name": text}]


# XML has no way to hold a lone CR: Excel itself stores it as _x000D_, and openpyxl writes it raw,
# so a CR written by openpyxl does not survive its own round trip. Excel files from Excel do.
excel_text = cell_text.map(lambda t: t.replace("\r", ""))


@EXAMPLES
@given(text=excel_text)
def test_any_cell_text_arrives_exactly_from_excel(folder: Path, text: str) -> None:
    path = folder / "cell.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Code", "Name"])
    ws.cell(row=2, column=1, value="C1")
    cell = ws.cell(row=2, column=2)
    cell.value = text
    cell.data_type = "s"  # text, even when it starts with "=" (openpyxl would make it a formula)
    wb.save(path)
    expected = [{"Code": "C1", "Name": text}] if text else [{"Code": "C1", "Name": ""}]
    assert sent(path) == expected


def read_or_refuse(path: Path) -> None:
    try:
        for _row in rows_in_process(path, MAPPING, LIMITS):
            pass
    except InputFileError as exc:
        assert str(exc).startswith(path.name), exc  # the refusal names the file


@EXAMPLES
@given(content=st.binary(max_size=4096), suffix=st.sampled_from([".csv", ".json", ".xlsx", ".tsv"]))
def test_any_bytes_import_or_are_refused_cleanly(folder: Path, content: bytes, suffix: str) -> None:
    path = folder / f"bytes{suffix}"
    path.write_bytes(content)
    read_or_refuse(path)


_WORKBOOK = workbook_bytes([["Code", "Name"], ["W1", "Workbook"], ["W2", "=not a formula"]])


@EXAMPLES
@given(seed=st.integers(0, 2**32), flips=st.integers(1, 40))
def test_a_damaged_workbook_is_read_or_refused_cleanly(folder: Path, seed: int, flips: int) -> None:
    rng = random.Random(seed)
    data = bytearray(_WORKBOOK)
    for _ in range(flips):
        data[rng.randrange(len(data))] = rng.randrange(256)
    path = folder / "damaged.xlsx"
    path.write_bytes(bytes(data))
    read_or_refuse(path)
