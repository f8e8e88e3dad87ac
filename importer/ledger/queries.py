"""What the ledger is asked: files and batches by state, summaries and reports, metrics,
the chain of import sets, and retention (what is old enough to forget)."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, func, or_, select, update

from importer.ledger.engine import LedgerEngine
from importer.ledger.records import (
    BatchRecord,
    FileRecord,
    FileSummary,
    aware,
    batch_record,
    file_record,
)
from importer.ledger.schema import batches, files, results, rows
from importer.ledger.states import (
    FAILED_ROW_STATES,
    FINAL_FILE_STATES,
    SENT_BATCH_STATES,
    UNFINISHED_BATCH_STATES,
    BatchState,
    FileState,
)


def row_counts_in(conn: Connection, file_id: int) -> dict[str, int]:
    found = conn.execute(
        select(rows.c.state, func.count()).where(rows.c.file_id == file_id).group_by(rows.c.state)
    )
    return {str(state): int(count) for state, count in found}


class LedgerRoom:
    """What every part of the ledger shares: its engine and the host it speaks for."""

    db: LedgerEngine
    host: str  # files are stamped with the host that took them; a host resumes and polls only its own

    def _connect(self) -> contextlib.AbstractContextManager[Connection]:
        return self.db.begin()

    def _mine(self) -> ColumnElement[bool]:
        return or_(files.c.host == self.host, files.c.host.is_(None))


class LedgerQueries(LedgerRoom):
    # -- files -------------------------------------------------------------------------------

    def get_file(self, file_id: int) -> FileRecord | None:
        with self._connect() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id)).first()
            return file_record(row) if row else None

    def is_final(self, file_id: int) -> bool:
        record = self.get_file(file_id)
        return record is not None and record.state in FINAL_FILE_STATES

    def files_in_states(self, states: Iterable[FileState], *, mine: bool = False) -> list[FileRecord]:
        """Files in these states; ``mine``: only those this host took."""
        query = select(files).where(files.c.state.in_([str(s) for s in states])).order_by(files.c.id)
        if mine:
            query = query.where(self._mine())
        with self._connect() as conn:
            return [file_record(row) for row in conn.execute(query)]

    def reruns_of(self, file_id: int) -> list[FileRecord]:
        with self._connect() as conn:
            found = conn.execute(select(files).where(files.c.rerun_of == file_id).order_by(files.c.id))
            return [file_record(row) for row in found]

    def find_earlier_import(self, sha256: str, before_file_id: int) -> int | None:
        """An earlier file with the same content that was (or is being) imported, not rejected."""
        with self._connect() as conn:
            return conn.execute(
                select(files.c.id)
                .where(
                    files.c.sha256 == sha256,
                    files.c.id < before_file_id,
                    files.c.rerun_of.is_(None),
                    files.c.state.not_in([FileState.REJECTED, FileState.DUPLICATE]),
                )
                .order_by(files.c.id)
                .limit(1)
            ).scalar()

    def unfinished_import(self, sha256: str, name: str) -> int | None:
        """A file with this content and name that this host took and has not finished."""
        with self._connect() as conn:
            return conn.execute(
                select(files.c.id)
                .where(
                    files.c.sha256 == sha256,
                    files.c.name == name,
                    files.c.rerun_of.is_(None),
                    self._mine(),
                    files.c.state.in_([FileState.QUEUED, FileState.POSTING, FileState.TRANSFORMING]),
                )
                .order_by(files.c.id.desc())
                .limit(1)
            ).scalar()

    # -- rows --------------------------------------------------------------------------------

    def row_counts(self, file_id: int) -> dict[str, int]:
        with self._connect() as conn:
            return row_counts_in(conn, file_id)

    def known_source_rows(self, file_id: int) -> set[int]:
        """Source rows already recorded (sent, being sent, or invalid): a resumed file skips them."""
        with self._connect() as conn:
            return set(conn.execute(select(rows.c.source_row).where(rows.c.file_id == file_id)).scalars())

    def failed_source_rows(self, file_id: int) -> set[int]:
        with self._connect() as conn:
            return set(
                conn.execute(
                    select(rows.c.source_row).where(
                        rows.c.file_id == file_id, rows.c.state.in_([str(s) for s in FAILED_ROW_STATES])
                    )
                ).scalars()
            )

    # -- batches -----------------------------------------------------------------------------

    def batches(self, file_id: int, states: Iterable[BatchState] | None = None) -> list[BatchRecord]:
        with self._connect() as conn:
            query = select(batches).where(batches.c.file_id == file_id).order_by(batches.c.id)
            if states is not None:
                query = query.where(batches.c.state.in_([str(s) for s in states]))
            return [batch_record(row) for row in conn.execute(query)]

    def batches_in_state(self, state: BatchState, *, mine: bool = False) -> list[BatchRecord]:
        """Batches in this state; ``mine``: only those of files this host took."""
        query = select(batches).where(batches.c.state == state).order_by(batches.c.id)
        if mine:
            query = query.join(files, files.c.id == batches.c.file_id).where(self._mine())
        with self._connect() as conn:
            return [batch_record(row) for row in conn.execute(query)]

    def waiting_batches(self, *, mine: bool = False) -> list[BatchRecord]:
        """Batches whose import set is still to be looked at: posted ones, and timed-out ones
        (a later poll may find their set processed)."""
        return self.batches_in_state(BatchState.POSTED, mine=mine) + self.batches_in_state(
            BatchState.TIMED_OUT, mine=mine
        )

    def last_import_set(self, file_id: int) -> str | None:
        """The import set of the file's latest accepted batch: the next batch runs after it."""
        with self._connect() as conn:
            return conn.execute(
                select(batches.c.import_set_id)
                .where(
                    batches.c.file_id == file_id,
                    batches.c.import_set_id.is_not(None),
                    batches.c.state.in_(list(SENT_BATCH_STATES)),
                )
                .order_by(batches.c.id.desc())
                .limit(1)
            ).scalar()

    def chain_tail(
        self, before_file_id: int, *, staging_table: str | None = None, mappings: Sequence[str] = ()
    ) -> str | None:
        """The last import set of the latest earlier file still transforming (same staging table,
        or one of ``mappings``): a new file's first batch must transform after it."""
        conditions = []
        if staging_table is not None:
            conditions.append(files.c.staging_table == staging_table)
        if mappings:
            conditions.append(files.c.mapping.in_(list(mappings)))
        if not conditions:
            return None
        with self._connect() as conn:
            return conn.execute(
                select(batches.c.import_set_id)
                .join(files, files.c.id == batches.c.file_id)
                .where(
                    files.c.id < before_file_id,
                    or_(*conditions),
                    files.c.state.in_([FileState.POSTING, FileState.TRANSFORMING]),
                    batches.c.import_set_id.is_not(None),
                )
                .order_by(batches.c.file_id.desc(), batches.c.id.desc())
                .limit(1)
            ).scalar()

    def claimed_import_sets(self, staging_table: str) -> set[str]:
        """Import sets already matched to a batch of this staging table."""
        with self._connect() as conn:
            return set(
                conn.execute(
                    select(batches.c.import_set_id)
                    .join(files, files.c.id == batches.c.file_id)
                    .where(files.c.staging_table == staging_table, batches.c.import_set_id.is_not(None))
                ).scalars()
            )

    # -- summaries, reports, metrics -----------------------------------------------------------

    def summaries(self, file_ids: Sequence[int] | None = None, limit: int = 20) -> list[FileSummary]:
        with self._connect() as conn:
            query = select(files).order_by(files.c.id.desc())
            if file_ids is not None:
                query = query.where(files.c.id.in_(list(file_ids)))
            else:
                query = query.limit(limit)
            found = [file_record(row) for row in conn.execute(query)]
            found.reverse()
            return [
                FileSummary(
                    file=record,
                    rows=row_counts_in(conn, record.id),
                    batches_in_flight=int(
                        conn.execute(
                            select(func.count())
                            .select_from(batches)
                            .where(
                                batches.c.file_id == record.id,
                                batches.c.state.in_(list(UNFINISHED_BATCH_STATES)),
                            )
                        ).scalar()
                        or 0
                    ),
                    **_waiting(conn, record.id),
                )
                for record in found
            ]

    def state_counts(self) -> tuple[Counter[str], Counter[str]]:
        """Files and rows by state, for metrics."""
        with self._connect() as conn:
            file_counts = Counter(
                {
                    str(s): int(n)
                    for s, n in conn.execute(select(files.c.state, func.count()).group_by(files.c.state))
                }
            )
            row_counts = Counter(
                {
                    str(s): int(n)
                    for s, n in conn.execute(select(rows.c.state, func.count()).group_by(rows.c.state))
                }
            )
            return file_counts, row_counts

    def report(self, file_id: int) -> Iterator[dict[str, Any]]:
        """One entry per source row and transform map, in source order (REPORT_COLUMNS)."""
        query = (
            select(
                rows.c.file_id,
                rows.c.source_row,
                rows.c.state.label("row_state"),
                rows.c.message.label("row_message"),
                rows.c.staging_sys_id.label("row_staging"),
                batches.c.import_set_id.label("batch_import_set"),
                results.c.transform_map,
                results.c.state.label("result_state"),
                results.c.target_table,
                results.c.target_sys_id,
                results.c.display_value,
                results.c.message.label("result_message"),
                results.c.import_set_id,
                results.c.staging_sys_id,
            )
            .select_from(
                rows.outerjoin(results, results.c.row_id == rows.c.id).outerjoin(
                    batches, batches.c.id == rows.c.batch_id
                )
            )
            .where(rows.c.file_id == file_id)
            .order_by(rows.c.source_row, results.c.id)
        )
        # A report streams while the person reads it: it must not hold the write lock.
        with self.db.reading() as conn:
            # Plain tuples, unpacked: a Row's attribute access per column was a third of the
            # report's CPU on 100,000 rows.
            for (
                file_id_,
                source_row,
                row_state,
                row_message,
                row_staging,
                batch_import_set,
                transform_map,
                result_state,
                target_table,
                target_sys_id,
                display_value,
                result_message,
                import_set_id,
                staging_sys_id,
            ) in conn.execution_options(yield_per=2000).execute(query):
                yield {
                    "file_id": file_id_,
                    "source_row": source_row,
                    "state": result_state or row_state,
                    "transform_map": transform_map or "",
                    "target_table": target_table or "",
                    "target_sys_id": target_sys_id or "",
                    "display_value": display_value or "",
                    "message": (result_message if result_state else row_message) or "",
                    "import_set": import_set_id or batch_import_set or "",
                    "staging_sys_id": staging_sys_id or row_staging or "",
                }

    # -- retention ---------------------------------------------------------------------------

    def finished_before(self, cutoff: datetime) -> list[FileRecord]:
        with self._connect() as conn:
            found = conn.execute(
                select(files)
                .where(files.c.finished_at.is_not(None), files.c.finished_at < cutoff)
                .order_by(files.c.id.desc())  # re-runs before the files they re-ran
            )
            return [file_record(row) for row in found]

    def forget_file(self, file_id: int) -> None:
        """Delete a file and everything recorded of it (retention)."""
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.rerun_of == file_id).values(rerun_of=None))
            conn.execute(delete(results).where(results.c.file_id == file_id))
            conn.execute(delete(rows).where(rows.c.file_id == file_id))
            conn.execute(delete(batches).where(batches.c.file_id == file_id))
            conn.execute(delete(files).where(files.c.id == file_id))


def _waiting(conn: Connection, file_id: int) -> dict[str, Any]:
    oldest = conn.execute(
        select(batches.c.import_set_id, batches.c.posted_at)
        .where(batches.c.file_id == file_id, batches.c.state == BatchState.POSTED)
        .order_by(batches.c.posted_at, batches.c.id)
        .limit(1)
    ).first()
    if oldest is None:
        return {}
    return {"waiting_on": oldest.import_set_id, "waiting_since": aware(oldest.posted_at)}
