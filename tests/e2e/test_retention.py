"""Pruning: ledger rows, reports and archived files older than the retention go (personal data)."""

from __future__ import annotations

from datetime import timedelta

from importer.app import runtime
from importer.config import load_config
from importer.daemon import prune
from tests.e2e.conftest import REPO, Workspace


def test_prune_forgets_finished_files_with_their_report_and_archived_copy(workspace: Workspace) -> None:
    assert workspace.cli("import", str(REPO / "samples" / "departments.csv")).code == 0
    archived = list((workspace.state / "archive").rglob("departments.csv"))
    reports = list((workspace.state / "reports").glob("*.csv"))
    assert len(archived) == 1 and len(reports) == 1
    config = load_config(workspace.config_path)
    with runtime(config) as rt:
        assert prune(rt, timedelta(days=1)) == 0  # too young
        assert prune(rt, timedelta(seconds=0)) == 1
        assert rt.ledger.get_file(1) is None
    assert not archived[0].exists() and not reports[0].exists()
    assert (REPO / "samples" / "departments.csv").exists()  # the user's own file is never touched
