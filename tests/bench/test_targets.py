"""The issue-9 targets table at smoke scale (seconds): every measurement runs to every row's
result, and the table names each of the seven targets. The figures themselves are judged by the
full run (``.venv/bin/python -m tests.bench``), not here: small files say nothing about speed."""

from __future__ import annotations

import math

import pytest

from tests.bench.targets import run_all, table

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]


def test_the_targets_table_at_smoke_scale() -> None:
    rows = run_all("smoke")
    print("\n" + table(rows, "smoke"))
    assert sorted(r.target.split()[0] for r in rows) == ["1", "2", "3", "3b", "4", "5", "6", "7"]
    assert all(math.isfinite(r.ratio) and r.ratio > 0 for r in rows)
