"""The ledger's state machine: which state a file or a batch may go to from which, in one
table each, and one method per transition.

Every transition goes through ``_transition``, which reads the states it leaves (FOR UPDATE on
PostgreSQL; SQLite's transactions hold the write lock from BEGIN IMMEDIATE), refuses any move
the table does not list, and commits with the block, so that a crash at any moment leaves a
ledger a restart can resume from: a batch is recorded as ``posting`` *before* its request is
sent, and ``posted`` only after the instance answered with an import set. A move into a
failure state always records why (``error`` of a file, ``last_error`` of a batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, Update, bindparam, delete, insert, select, update

from importer.errors import LedgerError
from importer.ledger.queries import LedgerRoom, row_counts_in
from importer.ledger.records import RowResult, utcnow
from importer.ledger.schema import batches, files, results, rows
from importer.ledger.states import (
    AWAITING_RESULTS_BATCH_STATES,
    FAILED_ROW_STATES,
    BatchState,
    FileState,
    RowState,
    combined_row_state,
)

_F = FileState
_B = BatchState

FILE_TRANSITIONS: dict[FileState, frozenset[FileState]] = {
    _F.QUEUED: frozenset({_F.POSTING, _F.REJECTED, _F.DUPLICATE}),
    _F.POSTING: frozenset({_F.POSTING, _F.TRANSFORMING, _F.REJECTED, _F.DONE, _F.DONE_WITH_ERRORS}),
    _F.TRANSFORMING: frozenset({_F.TRANSFORMING, _F.DONE, _F.DONE_WITH_ERRORS}),
    # Results that replace a timeout's change a finished file's verdict.
    _F.DONE: frozenset({_F.DONE_WITH_ERRORS}),
    _F.DONE_WITH_ERRORS: frozenset({_F.DONE}),
    _F.REJECTED: frozenset(),
    _F.DUPLICATE: frozenset(),
}
BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    # COMPLETE straight from POSTING: an API that answers at once (the Application Service API).
    _B.POSTING: frozenset({_B.POSTED, _B.PARKED, _B.ABANDONED, _B.COMPLETE}),
    _B.POSTED: frozenset({_B.COMPLETE, _B.TIMED_OUT}),
    _B.PARKED: frozenset({_B.ABANDONED}),
    # A later poll that finds the import set processed records its real results.
    _B.TIMED_OUT: frozenset({_B.COMPLETE}),
    _B.COMPLETE: frozenset(),
    _B.ABANDONED: frozenset(),
}
# Moves that record why: the transition must be given the reason.
_FAILURES = {
    (files.name, _F.REJECTED): "error",
    (files.name, _F.DUPLICATE): "error",
    (batches.name, _B.PARKED): "last_error",
    (batches.name, _B.ABANDONED): "last_error",
    (batches.name, _B.TIMED_OUT): "last_error",
}


class IllegalTransition(LedgerError):
    """A transition was asked of a record that is not in a state it may leave that way."""


def _transition(
    conn: Connection,
    table: Table,
    ids: Sequence[int],
    new: FileState | BatchState,
    **values: Any,
) -> None:
    """Move these files or batches (``table``) to ``new``, if the transition table allows it
    from the state each is in; otherwise nothing changes and IllegalTransition says why."""
    allowed: Mapping[Any, frozenset[Any]] = FILE_TRANSITIONS if table is files else BATCH_TRANSITIONS
    kind = "file" if table is files else "batch"
    reason = _FAILURES.get((table.name, new))
    if reason is not None and not values.get(reason):
        values[reason] = f"became {new}; no reason was given"  # never a failure without a word
    found = dict(
        conn.execute(select(table.c.id, table.c.state).where(table.c.id.in_(ids)).with_for_update()).all()
    )
    for record_id in ids:
        state = found.get(record_id)
        if state is None:
            raise IllegalTransition(f"{kind} {record_id} is not in the ledger")
        if new not in allowed[type(new)(state)]:
            raise IllegalTransition(f"{kind} {record_id} is {state}; it cannot become {new}")
    if table is files:
        values["updated_at"] = utcnow()
    conn.execute(update(table).where(table.c.id.in_(ids)).values(state=new, **values))


def _executemany(
    conn: Connection, statement: Insert | Update, names: Sequence[str], params: Sequence[Sequence[Any]]
) -> None:
    """One statement for many rows, each row's parameters given in the order of ``names`` (the
    statement's bindparams), handed to the driver as they are: SQLAlchemy's per-row parameter
    processing was most of the ledger's CPU when 100,000 rows' results are recorded."""
    if not params:
        return
    compiled = statement.compile(dialect=conn.dialect)
    if compiled.positional:
        order = [names.index(name) for name in compiled.positiontup or ()]
        if order != list(range(len(names))):
            params = [tuple(row[i] for i in order) for row in params]
        conn.exec_driver_sql(compiled.string, list(params))
    else:
        conn.exec_driver_sql(compiled.string, [dict(zip(names, row, strict=True)) for row in params])


def _bind(*names: str) -> dict[str, Any]:
    return {name: bindparam(name) for name in names}


_ROW_COLUMNS = ("file_id", "source_row", "batch_id", "batch_index", "state", "message")
_INSERT_ROWS = insert(rows).values(_bind(*_ROW_COLUMNS))
_RESULT_COLUMNS = (
    "row_id",
    "file_id",
    "transform_map",
    "state",
    "target_table",
    "target_sys_id",
    "display_value",
    "message",
    "import_set_id",
    "staging_sys_id",
)
_INSERT_RESULTS = insert(results).values(_bind(*_RESULT_COLUMNS))
_OUTCOME_COLUMNS = ("b_state", "b_message", "b_staging", "b_id")
_UPDATE_ROW_OUTCOMES = (
    update(rows)
    .where(rows.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), message=bindparam("b_message"), staging_sys_id=bindparam("b_staging"))
)


def _new_id(primary_key: Any) -> int:
    return int(primary_key[0])


def _unreported_row(index: int, import_set_id: str | None) -> RowResult:
    return RowResult(
        batch_index=index,
        state=RowState.ERROR,
        message=f"the instance did not store this row in import set "
        f"{import_set_id} (no staging row {index}): ServiceNow skips a row "
        "over its row size limit (8126 bytes) or one it could not read; check the "
        "row's values and the instance's import log",
    )


class LedgerTransitions(LedgerRoom):
    """Every change of a file's or a batch's state, and what is recorded with it."""

    # -- files -------------------------------------------------------------------------------

    def record_taken_file(
        self,
        *,
        name: str,
        relative_path: str,
        path: str,
        sha256: str,
        size: int,
        rerun_of: int | None = None,
        rerun_scope: str | None = None,
    ) -> int:
        now = utcnow()
        with self._connect() as conn:
            result = conn.execute(
                insert(files).values(
                    name=name,
                    relative_path=relative_path,
                    path=path,
                    sha256=sha256,
                    size=size,
                    state=FileState.QUEUED,
                    rerun_of=rerun_of,
                    rerun_scope=rerun_scope,
                    host=self.host,
                    created_at=now,
                    updated_at=now,
                )
            )
            return _new_id(result.inserted_primary_key)

    def _set_file(self, file_id: int, **values: Any) -> None:
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(**values))

    def assign_mapping(self, file_id: int, mapping: str, staging_table: str) -> None:
        self._set_file(file_id, mapping=mapping, staging_table=staging_table, updated_at=utcnow())

    def set_file_path(self, file_id: int, path: str) -> None:
        self._set_file(file_id, path=path, updated_at=utcnow())

    def set_report_path(self, file_id: int, path: str) -> None:
        self._set_file(file_id, report_path=path)

    def set_multi_import_set(self, file_id: int, multi_import_set_id: str) -> None:
        self._set_file(file_id, multi_import_set_id=multi_import_set_id)

    def mark_duplicate(self, file_id: int, original_id: int) -> None:
        with self._connect() as conn:
            _transition(
                conn,
                files,
                [file_id],
                FileState.DUPLICATE,
                error=f"the same content was imported as file {original_id}; "
                f"run `importer rerun {original_id}` to post it again",
                finished_at=utcnow(),
            )

    def mark_rejected(self, file_id: int, reason: str) -> None:
        with self._connect() as conn:
            _transition(conn, files, [file_id], FileState.REJECTED, error=reason, finished_at=utcnow())
            # Rows of a refused file were never sent; the batches that were not posted go too.
            conn.execute(delete(rows).where(rows.c.file_id == file_id, rows.c.state == RowState.PENDING))

    def mark_posting(self, file_id: int) -> None:
        with self._connect() as conn:
            _transition(conn, files, [file_id], FileState.POSTING)

    def mark_transforming(self, file_id: int) -> None:
        with self._connect() as conn:
            _transition(conn, files, [file_id], FileState.TRANSFORMING)

    def finish_file(self, file_id: int) -> FileState:
        """Every row has its result: the file is done, or done with errors."""
        with self._connect() as conn:
            counts = row_counts_in(conn, file_id)
            unfinished = counts.get(RowState.PENDING, 0) + counts.get(RowState.POSTED, 0)
            if unfinished:
                raise IllegalTransition(f"file {file_id} still has {unfinished} rows without a result")
            new = _verdict(counts)
            _transition(conn, files, [file_id], new, finished_at=utcnow())
            return new

    def _refinish(self, conn: Connection, file_ids: set[int]) -> None:
        """Finished files whose rows changed (timeout results replaced): their state follows them."""
        found = conn.execute(
            select(files.c.id, files.c.state).where(
                files.c.id.in_(sorted(file_ids)),
                files.c.state.in_([FileState.DONE, FileState.DONE_WITH_ERRORS]),
            )
        ).all()
        for file_id, state in found:
            new = _verdict(row_counts_in(conn, file_id))
            if new != state:
                _transition(conn, files, [file_id], new)

    def begin_attempt(self, file_id: int) -> int:
        """A processing attempt starts; returns how many have begun without ending, this one included."""
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(attempts=files.c.attempts + 1))
            return int(conn.execute(select(files.c.attempts).where(files.c.id == file_id)).scalar() or 0)

    def end_attempt(self, file_id: int) -> None:
        """The attempt ended (whatever its outcome) with the process still alive."""
        self._set_file(file_id, attempts=0)

    # -- rows and batches --------------------------------------------------------------------

    def record_invalid_rows(self, file_id: int, invalid: Sequence[tuple[int, str]]) -> None:
        if not invalid:
            return
        with self._connect() as conn:
            invalid_state = str(RowState.INVALID)
            _executemany(
                conn,
                _INSERT_ROWS,
                _ROW_COLUMNS,
                [(file_id, number, None, None, invalid_state, message) for number, message in invalid],
            )

    def open_batch(
        self,
        file_id: int,
        source_rows: Sequence[int],
        *,
        body_bytes: int,
        run_after: str | None,
        multi_import_set_id: str | None,
    ) -> int:
        """Record a batch as ``posting`` with its rows (one statement for them all), before its
        request is sent."""
        with self._connect() as conn:
            batch_id = _new_id(
                conn.execute(
                    insert(batches).values(
                        file_id=file_id,
                        state=BatchState.POSTING,
                        row_count=len(source_rows),
                        body_bytes=body_bytes,
                        first_source_row=source_rows[0],
                        run_after=run_after,
                        multi_import_set_id=multi_import_set_id,
                        attempts=1,
                        posting_started_at=utcnow(),
                    )
                ).inserted_primary_key
            )
            pending = str(RowState.PENDING)
            _executemany(
                conn,
                _INSERT_ROWS,
                _ROW_COLUMNS,
                [
                    (file_id, number, batch_id, index, pending, None)
                    for index, number in enumerate(source_rows)
                ],
            )
            return batch_id

    def mark_batch_posted(self, batch_id: int, import_set_id: str, multi_import_set_id: str | None) -> None:
        with self._connect() as conn:
            _transition(
                conn,
                batches,
                [batch_id],
                BatchState.POSTED,
                import_set_id=import_set_id,
                multi_import_set_id=multi_import_set_id,
                posted_at=utcnow(),
                last_error=None,
            )
            conn.execute(update(rows).where(rows.c.batch_id == batch_id).values(state=RowState.POSTED))

    def park_batch(self, batch_id: int, error: str, next_attempt_at: datetime) -> None:
        """Sending failed in a way that proves the instance did not take it: retry later."""
        with self._connect() as conn:
            _transition(
                conn,
                batches,
                [batch_id],
                BatchState.PARKED,
                last_error=error,
                next_attempt_at=next_attempt_at,
            )

    def abandon_batch(self, batch_id: int, reason: str) -> None:
        """The batch never reached the instance: forget its rows so they are sent in a new batch."""
        with self._connect() as conn:
            _transition(
                conn, batches, [batch_id], BatchState.ABANDONED, last_error=reason, completed_at=utcnow()
            )
            conn.execute(delete(rows).where(rows.c.batch_id == batch_id))

    def record_row_results(
        self,
        batch_id: int,
        outcomes: Sequence[RowResult],
        *,
        sent_directly: bool = False,
        timed_out: bool = False,
    ) -> int:
        """Record every row's outcome per transform map; the batch becomes complete (or
        ``timed_out``: the outcomes say it was not transformed in time, and real results may
        replace them later: a ``timed_out`` batch accepts results once more).

        ``sent_directly``: the batch went to an API that answers at once (the Application
        Service API), so it is completed straight from ``posting``; no import set to wait for.

        Returns how many rows of the batch the instance did not report (they are recorded as
        ``error`` with a message saying so — a row is never left without a result).
        """
        with self._connect() as conn:
            missing = self._record_results(
                conn, [(batch_id, outcomes)], sent_directly=sent_directly, timed_out=timed_out
            )
            if batch_id not in missing:
                raise IllegalTransition(f"batch {batch_id} is not waiting for results")
            return missing[batch_id]

    def record_results_of_batches(self, outcomes: Sequence[tuple[int, Sequence[RowResult]]]) -> list[int]:
        """``record_row_results`` for several processed batches in one transaction and a few
        statements (results stream in while a file is posted); returns the batches recorded:
        one no longer waiting (another process recorded it first) is left alone."""
        with self._connect() as conn:
            return list(self._record_results(conn, outcomes, sent_directly=False, timed_out=False))

    def _record_results(
        self,
        conn: Connection,
        outcomes: Sequence[tuple[int, Sequence[RowResult]]],
        *,
        sent_directly: bool,
        timed_out: bool,
    ) -> dict[int, int]:
        """The rows' outcomes of the batches still waiting for them, written with one statement
        per table whatever the number of batches; returns, per batch recorded, how many of its
        rows the instance did not report."""
        wanted = [batch_id for batch_id, _ in outcomes]
        if not wanted:
            return {}
        found = {
            row.id: row
            for row in conn.execute(
                select(batches.c.id, batches.c.state, batches.c.file_id, batches.c.import_set_id)
                .where(batches.c.id.in_(wanted))
                .with_for_update()
            )
        }
        if sent_directly:
            awaiting: frozenset[BatchState] = frozenset({BatchState.POSTING})
        else:
            awaiting = frozenset({BatchState.POSTED}) if timed_out else AWAITING_RESULTS_BATCH_STATES
        recorded = {bid: found[bid] for bid in wanted if bid in found and found[bid].state in awaiting}
        if not recorded:
            return {}
        replaced = [bid for bid, batch in recorded.items() if batch.state == BatchState.TIMED_OUT]
        if replaced:
            # Those import sets were processed after all: their real results replace the timeout's.
            conn.execute(
                delete(results).where(
                    results.c.row_id.in_(select(rows.c.id).where(rows.c.batch_id.in_(replaced)))
                )
            )
        members: dict[int, list[tuple[int, int]]] = {bid: [] for bid in recorded}
        for row_id, batch_id, index in conn.execute(
            select(rows.c.id, rows.c.batch_id, rows.c.batch_index).where(rows.c.batch_id.in_(list(recorded)))
        ):
            members[batch_id].append((index, row_id))
        result_rows: list[tuple[Any, ...]] = []
        row_updates: list[tuple[Any, ...]] = []
        missing: dict[int, int] = {}
        for batch_id, batch_outcomes in outcomes:
            batch = recorded.get(batch_id)
            if batch is None or batch_id in missing:
                continue
            by_index: dict[int, list[RowResult]] = {}
            for outcome in batch_outcomes:
                by_index.setdefault(outcome.batch_index, []).append(outcome)
            missing[batch_id] = 0
            for index, row_id in members[batch_id]:
                got = by_index.get(index)
                if not got:
                    missing[batch_id] += 1
                    got = [_unreported_row(index, batch.import_set_id)]
                if len(got) == 1:  # one transform map: the common case, kept cheap
                    (only,) = got
                    state = combined_row_state([only.state])
                    row_updates.append((str(state), only.message, only.staging_sys_id, row_id))
                else:
                    messages = [r.message for r in got if r.message]
                    state = combined_row_state([r.state for r in got])
                    message = "; ".join(dict.fromkeys(messages)) or None
                    row_updates.append((str(state), message, got[0].staging_sys_id, row_id))
                result_rows.extend(
                    (
                        row_id,
                        batch.file_id,
                        r.transform_map,
                        str(r.state),
                        r.target_table,
                        r.target_sys_id,
                        r.display_value,
                        r.message,
                        batch.import_set_id,
                        r.staging_sys_id,
                    )
                    for r in got
                )
        _executemany(conn, _UPDATE_ROW_OUTCOMES, _OUTCOME_COLUMNS, row_updates)
        _executemany(conn, _INSERT_RESULTS, _RESULT_COLUMNS, result_rows)
        if timed_out:
            # The outcomes of a timeout say why (one batch at a time: record_row_results).
            why = next((r.message for _, found in outcomes for r in found if r.message), None)
            _transition(
                conn, batches, list(recorded), BatchState.TIMED_OUT, completed_at=utcnow(), last_error=why
            )
        else:
            _transition(conn, batches, list(recorded), BatchState.COMPLETE, completed_at=utcnow())
        if replaced:
            self._refinish(conn, {recorded[bid].file_id for bid in replaced})
        return missing


def _verdict(counts: Mapping[str, int]) -> FileState:
    failed = any(counts.get(state, 0) for state in FAILED_ROW_STATES)
    return FileState.DONE_WITH_ERRORS if failed else FileState.DONE
