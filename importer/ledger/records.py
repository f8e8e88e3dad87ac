"""What the ledger hands out: plain, frozen records of files, batches and row outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from importer.ledger.states import BatchState, FileState, RowState

REPORT_COLUMNS = (
    "file_id",
    "source_row",
    "state",
    "transform_map",
    "target_table",
    "target_sys_id",
    "display_value",
    "message",
    "import_set",
    "staging_sys_id",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything the ledger stores is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: int
    name: str
    relative_path: str
    path: str
    sha256: str
    size: int
    mapping: str | None
    staging_table: str | None
    state: FileState
    rerun_of: int | None
    rerun_scope: str | None
    multi_import_set_id: str | None
    error: str | None
    report_path: str | None
    created_at: datetime
    finished_at: datetime | None
    host: str | None = None
    attempts: int = 0  # processing attempts begun and not ended (the process died during them)


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: int
    file_id: int
    state: BatchState
    row_count: int
    body_bytes: int
    first_source_row: int
    import_set_id: str | None
    multi_import_set_id: str | None
    run_after: str | None
    attempts: int
    last_error: str | None
    posting_started_at: datetime | None
    next_attempt_at: datetime | None
    posted_at: datetime | None = None


class RowResult(NamedTuple):
    """One transform map's outcome for one staging row, as the instance reported it. A named
    tuple, not a frozen dataclass: one is made per row and transform map (100,000s per file), and
    a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``."""

    batch_index: int  # sys_import_row
    state: RowState
    transform_map: str | None = None
    target_table: str | None = None
    target_sys_id: str | None = None
    display_value: str | None = None
    message: str | None = None
    staging_sys_id: str | None = None


@dataclass(frozen=True, slots=True)
class FileSummary:
    file: FileRecord
    rows: dict[str, int]
    batches_in_flight: int
    # The oldest import set still waiting for its transform, and since when it was accepted.
    waiting_on: str | None = None
    waiting_since: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.file.id,
            "name": self.file.name,
            "mapping": self.file.mapping,
            "state": str(self.file.state),
            "rows": self.rows,
            "batches_in_flight": self.batches_in_flight,
            "rerun_of": self.file.rerun_of,
            "error": self.file.error,
            "waiting_on_import_set": self.waiting_on,
            "waiting_since": self.waiting_since.isoformat() if self.waiting_since else None,
        }


def file_record(row: Any) -> FileRecord:
    return FileRecord(
        id=row.id,
        name=row.name,
        relative_path=row.relative_path,
        path=row.path,
        sha256=row.sha256,
        size=row.size,
        mapping=row.mapping,
        staging_table=row.staging_table,
        state=FileState(row.state),
        rerun_of=row.rerun_of,
        rerun_scope=row.rerun_scope,
        multi_import_set_id=row.multi_import_set_id,
        error=row.error,
        report_path=row.report_path,
        created_at=aware(row.created_at) or utcnow(),
        finished_at=aware(row.finished_at),
        host=row.host,
        attempts=row.attempts or 0,
    )


def batch_record(row: Any) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        file_id=row.file_id,
        state=BatchState(row.state),
        row_count=row.row_count,
        body_bytes=row.body_bytes,
        first_source_row=row.first_source_row,
        import_set_id=row.import_set_id,
        multi_import_set_id=row.multi_import_set_id,
        run_after=row.run_after,
        attempts=row.attempts,
        last_error=row.last_error,
        posting_started_at=aware(row.posting_started_at),
        next_attempt_at=aware(row.next_attempt_at),
        posted_at=aware(row.posted_at),
    )
