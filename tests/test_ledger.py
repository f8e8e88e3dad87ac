"""The ledger's state machine, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from importer.ledger import BatchState, FileState, IllegalTransition, Ledger, RowResult, RowState


def _file(ledger: Ledger, sha: str = "a" * 64) -> int:
    file_id = ledger.record_taken_file(
        name="hr.csv", relative_path="hr.csv", path="/p/hr.csv", sha256=sha, size=10
    )
    ledger.assign_mapping(file_id, "hr_users", "u_hr_user_import")
    return file_id


def test_a_file_goes_from_queued_to_done_with_errors(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        assert ledger.get_file(file_id).state == FileState.QUEUED
        ledger.mark_posting(file_id)
        batch = ledger.open_batch(
            file_id, [2, 3, 5], body_bytes=100, run_after=None, multi_import_set_id=None
        )
        ledger.record_invalid_rows(file_id, [(4, "'First name' is required but empty")])
        assert ledger.row_counts(file_id) == {"pending": 3, "invalid": 1}
        ledger.mark_batch_posted(batch, "ISET1", "MISET1")
        ledger.mark_transforming(file_id)
        missing = ledger.record_row_results(
            batch,
            [
                RowResult(
                    0, RowState.INSERTED, "HR users", "sys_user", "u1", "Zoë Ångström", staging_sys_id="s0"
                ),
                RowResult(
                    1,
                    RowState.ERROR,
                    "HR users",
                    message="Reference value 'X' not found",
                    staging_sys_id="s1",
                ),
            ],
        )
        assert missing == 1  # row 5 was not reported by the instance: recorded as error, not lost
        assert ledger.finish_file(file_id) == FileState.DONE_WITH_ERRORS
        report = list(ledger.report(file_id))
        assert [(e["source_row"], e["state"]) for e in report] == [
            (2, "inserted"),
            (3, "error"),
            (4, "invalid"),
            (5, "error"),
        ]
        assert report[0]["display_value"] == "Zoë Ångström"
        assert report[0]["import_set"] == "ISET1"
        assert "not found" in report[1]["message"]
        assert "no staging row 2" in report[3]["message"]


def test_several_transform_maps_give_one_report_line_each(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        ledger.mark_posting(file_id)
        batch = ledger.open_batch(file_id, [2], body_bytes=10, run_after=None, multi_import_set_id=None)
        ledger.mark_batch_posted(batch, "ISET1", "M")
        ledger.record_row_results(
            batch,
            [
                RowResult(0, RowState.UPDATED, "Users"),
                RowResult(0, RowState.ERROR, "Managers", message="no manager"),
            ],
        )
        assert ledger.row_counts(file_id) == {"error": 1}
        assert [(e["transform_map"], e["state"]) for e in ledger.report(file_id)] == [
            ("Users", "updated"),
            ("Managers", "error"),
        ]


def test_transitions_refuse_a_state_they_cannot_leave(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        with pytest.raises(IllegalTransition):
            ledger.finish_file(file_id)  # queued -> done skips posting
        ledger.mark_posting(file_id)
        batch = ledger.open_batch(file_id, [2], body_bytes=10, run_after=None, multi_import_set_id=None)
        with pytest.raises(IllegalTransition):
            ledger.record_row_results(batch, [])  # not posted yet
        ledger.mark_transforming(file_id)
        with pytest.raises(IllegalTransition, match="without a result"):
            ledger.finish_file(file_id)


def test_an_abandoned_batch_gives_its_rows_back(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        ledger.mark_posting(file_id)
        batch = ledger.open_batch(file_id, [2, 3], body_bytes=10, run_after=None, multi_import_set_id=None)
        assert ledger.known_source_rows(file_id) == {2, 3}
        ledger.abandon_batch(batch, "never reached the instance")
        assert ledger.known_source_rows(file_id) == set()
        assert ledger.batches(file_id)[0].state == BatchState.ABANDONED


def test_duplicates_and_the_chain_between_files(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        first = _file(ledger, "b" * 64)
        ledger.mark_posting(first)
        batch = ledger.open_batch(first, [2], body_bytes=10, run_after=None, multi_import_set_id=None)
        ledger.mark_batch_posted(batch, "ISET-A", "M")
        second = _file(ledger, "b" * 64)
        assert ledger.find_earlier_import("b" * 64, second) == first
        ledger.mark_duplicate(second, first)
        assert ledger.get_file(second).state == FileState.DUPLICATE
        third = _file(ledger, "c" * 64)
        assert ledger.chain_tail(third, staging_table="u_hr_user_import") == "ISET-A"
        assert ledger.chain_tail(third, staging_table="u_other") is None
        assert ledger.chain_tail(third, staging_table="u_other", mappings=["hr_users"]) == "ISET-A"


def test_migrations_create_the_schema_and_are_idempotent(ledger_url: str) -> None:
    Ledger(ledger_url).close()
    with Ledger(ledger_url) as ledger:  # a second start upgrades nothing and loses nothing
        tables = set(inspect(ledger.engine).get_table_names())
        assert {"files", "batches", "rows", "results", "alembic_version"} <= tables


def test_an_upgrade_from_the_first_schema_keeps_every_file(ledger_url: str) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import text

    from importer.ledger.engine import MIGRATIONS

    old = Ledger(ledger_url, migrate=False)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with old.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")  # the ledger as the first release left it
        connection.execute(
            text(
                "INSERT INTO files (name, relative_path, path, sha256, size, state, created_at, updated_at) "
                "VALUES ('old.csv', 'old.csv', '/a/old.csv', :sha, 1, 'done', :now, :now)"
            ),
            {"sha": "d" * 64, "now": "2026-01-01 00:00:00"},
        )
    old.close()
    with Ledger(ledger_url) as ledger:  # this release migrates it
        record = ledger.get_file(1)
        assert record is not None and record.name == "old.csv" and record.state == FileState.DONE
        assert record.host is None
        assert [f.id for f in ledger.files_in_states([FileState.DONE], mine=True)] == [1]


def test_attempts_count_until_one_ends(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        file_id = _file(ledger)
        assert ledger.get_file(file_id).attempts == 0
        assert ledger.begin_attempt(file_id) == 1
        assert ledger.begin_attempt(file_id) == 2  # the process died during the first
        assert ledger.get_file(file_id).attempts == 2
        ledger.end_attempt(file_id)
        assert ledger.get_file(file_id).attempts == 0
