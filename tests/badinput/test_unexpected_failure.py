"""A step that crashes on one file's content refuses that file (in failed/, with the reason) and
leaves the next file alone, instead of leaving it in processing/ to crash again at every start."""

from __future__ import annotations

from pathlib import Path

import pytest

import importer.pipeline.posting
from tests.e2e.conftest import Workspace

CSV = "Code,Name\nENG,Engineering\nFIN,Finance\n"


def test_a_crash_on_one_file_refuses_it_and_the_next_file_is_imported(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importer.pipeline.posting.build_batches

    def crash_on_finance(rows, *args):  # a bug in a step after reading, met on one file's content
        rows = list(rows)
        if any(row.record and row.record.get("Code") == "FIN" for row in rows):
            raise ZeroDivisionError("division by zero")
        return real(iter(rows), *args)

    monkeypatch.setattr(importer.pipeline.posting, "build_batches", crash_on_finance)
    bad = workspace.cli("import", str(workspace.file("departments-bad.csv", CSV)), "--json")
    assert bad.code == 3, bad.output
    assert "failed unexpectedly on this file (ZeroDivisionError: division by zero)" in bad.output
    failed = workspace.state / "failed"
    assert (failed / "departments-bad.csv").read_text() == CSV
    assert "set aside" in (failed / "departments-bad.csv.error.txt").read_text()
    good = workspace.cli("import", str(workspace.file("departments-good.csv", "Code,Name\nHR,People\n")))
    assert good.code == 0, good.output


def test_a_file_gone_from_processing_is_refused_saying_so(workspace: Workspace) -> None:
    from importer.app import runtime
    from importer.config import load_config

    config = load_config(workspace.config_path)
    with runtime(config) as rt:
        path = config.paths.processing / "20261201T000000000000-departments.csv"
        path.write_text(CSV)
        file_id = rt.importer.record_file(path, Path("departments.csv"))  # type: ignore[arg-type]
        path.unlink()  # someone removes it at the wrong moment
        outcome = rt.importer.process_file(file_id)
        assert str(outcome.state) == "rejected"
        record = rt.ledger.get_file(file_id)
        assert record is not None and "disappeared before it could be read" in (record.error or "")
        assert record.attempts == 0
