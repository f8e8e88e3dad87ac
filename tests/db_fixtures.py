"""Ledger database fixtures: every ledger test runs on SQLite and on PostgreSQL.

PostgreSQL comes from IMPORTER_TEST_PG_URL (set by .ci/run); each test gets a schema of its
own, dropped afterwards. Without the variable the PostgreSQL cases are skipped, loudly.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("IMPORTER_TEST_PG_URL")


def pytest_report_header(config: pytest.Config) -> str:
    if PG_URL:
        return f"ledger backends: sqlite, postgresql ({PG_URL})"
    return "ledger backends: sqlite ONLY — IMPORTER_TEST_PG_URL is unset, PostgreSQL cases are SKIPPED"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``pg`` marker on every case that needs PostgreSQL (``-m "not pg"`` leaves them out)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if params.get("ledger_url") == "postgresql" or "pg_ledger_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pg)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/var/ledger.db"
        return
    yield from _pg_schema_url()


@pytest.fixture
def pg_ledger_url() -> Iterator[str]:
    """Only PostgreSQL: what several hosts share."""
    yield from _pg_schema_url()


def _pg_schema_url() -> Iterator[str]:
    if not PG_URL:
        warnings.warn("IMPORTER_TEST_PG_URL is unset: PostgreSQL ledger case skipped", stacklevel=1)
        pytest.skip("IMPORTER_TEST_PG_URL is unset: the PostgreSQL ledger is NOT tested in this run")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{separator}options={quote(f'-csearch_path={schema}')}"
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
