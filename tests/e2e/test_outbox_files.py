"""The outbox through `importer import` in-process: pruning, and an outbox that cannot be written."""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import pytest

from importer.app import runtime
from importer.config import load_config
from importer.daemon import prune
from tests.e2e.conftest import REPO, Workspace


def test_prune_takes_the_answers_with_the_reports_and_leaves_other_files(workspace: Workspace) -> None:
    assert workspace.cli("import", str(REPO / "samples" / "departments.csv")).code == 0
    refused = workspace.file("holidays.csv", "Name,Days\nAda,25\n")
    assert workspace.cli("import", str(refused)).code == 3
    answers = sorted(p.name for p in workspace.outbox.iterdir())
    assert answers == [
        "1-departments.csv.report.csv",
        "1-departments.csv.report.html",
        "holidays.csv.error.txt",
    ]
    (workspace.outbox / "read-me.txt").write_text("a person's own file\n")

    config = load_config(workspace.config_path)
    with runtime(config) as rt:
        assert prune(rt, timedelta(days=1)) == 0  # too young: everything stays
        assert len(list(workspace.outbox.iterdir())) == 4
        assert prune(rt, timedelta(seconds=0)) == 2

    assert sorted(p.name for p in workspace.outbox.iterdir()) == ["read-me.txt"]


def test_an_outbox_that_cannot_be_written_never_fails_the_import(
    workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    workspace.outbox.write_text("not a folder")  # say, a share that is not mounted as expected
    with caplog.at_level(logging.ERROR, logger="importer.outbox"):
        result = workspace.cli("import", str(REPO / "samples" / "departments.csv"))
    assert result.code == 0, result.output
    assert "the import is recorded" in caplog.text
    assert list((workspace.state / "reports").glob("1-departments.csv.csv"))
    assert workspace.outbox.read_text() == "not a folder"


def test_the_outbox_can_be_turned_off(workspace: Workspace) -> None:
    config = workspace.config_path.read_text().replace(f'outbox = "{workspace.outbox}"', 'outbox = ""')
    workspace.config_path.write_text(config)
    assert workspace.cli("import", str(REPO / "samples" / "departments.csv")).code == 0
    assert not os.path.lexists(workspace.outbox)
    assert "report: " + str(workspace.state / "reports") in workspace.cli("status").stdout


def test_a_verified_file_shows_what_servicenow_holds_on_its_page(workspace: Workspace) -> None:
    from tests.e2e.test_verify import contacts_csv

    result = workspace.cli("import", str(workspace.file("contacts.csv", contacts_csv(4))))  # verify: true
    assert result.code == 0, result.output
    page = (workspace.outbox / "1-contacts.csv.report.html").read_text(encoding="utf-8")
    assert "Read back from ServiceNow (6 differences)" in page  # four dropped cities, two cut names
    assert "truncated to 12 characters by staging column u_name (max_length 12)" in page
    assert "Someone With A Long Name 0" in page
