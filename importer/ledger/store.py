"""The ledger: what happened to every file, batch and row, as an explicit state machine.

Each transition is one method that checks the state it leaves (``_transition``) and commits
before returning, so that a crash at any moment leaves a ledger a restart can resume from:
a batch is recorded as ``posting`` *before* its request is sent, and ``posted`` only after
the instance answered with an import set.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from importer.errors import ConfigError, ImporterError
from importer.ledger.schema import batches, files, results, rows
from importer.ledger.states import (
    FAILED_ROW_STATES,
    FINAL_FILE_STATES,
    BatchState,
    FileState,
    RowState,
    combined_row_state,
)

MIGRATIONS = Path(__file__).parent / "migrations"

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


class LedgerError(ImporterError):
    """The ledger database failed or is in a state this version cannot use."""


class IllegalTransition(LedgerError):
    """A transition was asked of a record that is not in a state it may leave that way."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
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


@dataclass(frozen=True, slots=True)
class RowResult:
    """One transform map's outcome for one staging row, as the instance reported it."""

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


def _file_record(row: Any) -> FileRecord:
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
        created_at=_aware(row.created_at) or utcnow(),
        finished_at=_aware(row.finished_at),
        host=row.host,
        attempts=row.attempts or 0,
    )


def _batch_record(row: Any) -> BatchRecord:
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
        posting_started_at=_aware(row.posting_started_at),
        next_attempt_at=_aware(row.next_attempt_at),
        posted_at=_aware(row.posted_at),
    )


def _prepare_sqlite(url: str) -> None:
    """Create the folder and the database file private to the service user before SQLite does."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling starts transactions late (and DDL outside them);
    # transactions are begun explicitly instead (_sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE: take the write lock when the transaction starts, so that two processes (the
    # daemon and a command run beside it) checking a state and then changing it never both
    # pass the check; the loser waits (busy_timeout), then sees the new state. Streaming reads
    # (reports) say read_only and take no lock.
    read_only = conn.get_execution_options().get("read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Ledger:
    def __init__(self, url: str, *, migrate: bool = True, host: str | None = None) -> None:
        self.url = url
        # Files are stamped with the host that took them; a host resumes and polls only its own.
        self.host = host or socket.gethostname()
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError for any malformed URL
            raise ConfigError(f"paths.ledger: {url!r} is not a database URL ({exc})") from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            _prepare_sqlite(url)
        elif parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we ship
        try:
            # A file on this host needs no ping before each use (a ping is a round trip per transaction).
            self.engine: Engine = create_engine(parsed, pool_pre_ping=self.dialect != "sqlite", future=True)
        except Exception as exc:
            raise ConfigError(f"paths.ledger: cannot use {parsed.render_as_string()}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        if migrate:
            self.migrate()

    # -- lifecycle ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest version (Alembic); an upgrade never drops a ledger."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self._migration_lock(), self.engine.begin() as connection:
                if self.dialect == "postgresql":
                    # Several hosts (or a command beside the daemon) may start at once: one migrates.
                    connection.execute(text("SELECT pg_advisory_xact_lock(7203554128)"))
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot open the ledger {self.engine.url.render_as_string()}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite runs DDL outside transactions: a file lock keeps two processes from migrating at once."""
        database = self.engine.url.database if self.dialect == "sqlite" else None
        if not database or database == ":memory:":
            yield
            return
        lock_path = f"{database}.migrate.lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> Any:
        return self.engine.begin()

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
            return int(result.inserted_primary_key[0])

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
                    or_(files.c.host == self.host, files.c.host.is_(None)),
                    files.c.state.in_([FileState.QUEUED, FileState.POSTING, FileState.TRANSFORMING]),
                )
                .order_by(files.c.id.desc())
                .limit(1)
            ).scalar()

    def _transition(
        self, conn: Connection, file_id: int, allowed: Iterable[FileState], new: FileState, **values: Any
    ) -> None:
        # FOR UPDATE (PostgreSQL): a transition checks and changes the state as one step.
        state = conn.execute(select(files.c.state).where(files.c.id == file_id).with_for_update()).scalar()
        if state is None:
            raise IllegalTransition(f"file {file_id} is not in the ledger")
        if FileState(state) not in set(allowed):
            raise IllegalTransition(f"file {file_id} is {state}; it cannot become {new}")
        conn.execute(
            update(files).where(files.c.id == file_id).values(state=new, updated_at=utcnow(), **values)
        )

    def assign_mapping(self, file_id: int, mapping: str, staging_table: str) -> None:
        with self._connect() as conn:
            conn.execute(
                update(files)
                .where(files.c.id == file_id)
                .values(mapping=mapping, staging_table=staging_table, updated_at=utcnow())
            )

    def mark_duplicate(self, file_id: int, original_id: int) -> None:
        with self._connect() as conn:
            self._transition(
                conn,
                file_id,
                [FileState.QUEUED],
                FileState.DUPLICATE,
                error=f"the same content was imported as file {original_id}; "
                f"run `importer rerun {original_id}` to post it again",
                finished_at=utcnow(),
            )

    def mark_rejected(self, file_id: int, reason: str) -> None:
        with self._connect() as conn:
            self._transition(
                conn,
                file_id,
                [FileState.QUEUED, FileState.POSTING],
                FileState.REJECTED,
                error=reason,
                finished_at=utcnow(),
            )
            # Rows of a refused file were never sent; the batches that were not posted go too.
            conn.execute(delete(rows).where(rows.c.file_id == file_id, rows.c.state == RowState.PENDING))

    def mark_posting(self, file_id: int) -> None:
        with self._connect() as conn:
            self._transition(conn, file_id, [FileState.QUEUED, FileState.POSTING], FileState.POSTING)

    def mark_transforming(self, file_id: int) -> None:
        with self._connect() as conn:
            self._transition(
                conn, file_id, [FileState.POSTING, FileState.TRANSFORMING], FileState.TRANSFORMING
            )

    def finish_file(self, file_id: int) -> FileState:
        """Every row has its result: the file is done, or done with errors."""
        with self._connect() as conn:
            counts = self._row_counts(conn, file_id)
            unfinished = counts.get(RowState.PENDING, 0) + counts.get(RowState.POSTED, 0)
            if unfinished:
                raise IllegalTransition(f"file {file_id} still has {unfinished} rows without a result")
            failed = any(counts.get(state, 0) for state in FAILED_ROW_STATES)
            new = FileState.DONE_WITH_ERRORS if failed else FileState.DONE
            self._transition(
                conn, file_id, [FileState.POSTING, FileState.TRANSFORMING], new, finished_at=utcnow()
            )
            return new

    def begin_attempt(self, file_id: int) -> int:
        """A processing attempt starts; returns how many have begun without ending, this one included."""
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(attempts=files.c.attempts + 1))
            return int(conn.execute(select(files.c.attempts).where(files.c.id == file_id)).scalar() or 0)

    def end_attempt(self, file_id: int) -> None:
        """The attempt ended (whatever its outcome) with the process still alive."""
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(attempts=0))

    def set_file_path(self, file_id: int, path: str) -> None:
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(path=path, updated_at=utcnow()))

    def set_report_path(self, file_id: int, path: str) -> None:
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.id == file_id).values(report_path=path))

    def set_multi_import_set(self, file_id: int, multi_import_set_id: str) -> None:
        with self._connect() as conn:
            conn.execute(
                update(files).where(files.c.id == file_id).values(multi_import_set_id=multi_import_set_id)
            )

    def get_file(self, file_id: int) -> FileRecord | None:
        with self._connect() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id)).first()
            return _file_record(row) if row else None

    def files_in_states(self, states: Iterable[FileState], *, mine: bool = False) -> list[FileRecord]:
        """Files in these states; ``mine``: only those this host took."""
        query = select(files).where(files.c.state.in_([str(s) for s in states])).order_by(files.c.id)
        if mine:
            query = query.where(or_(files.c.host == self.host, files.c.host.is_(None)))
        with self._connect() as conn:
            return [_file_record(row) for row in conn.execute(query)]

    def finished_before(self, cutoff: datetime) -> list[FileRecord]:
        with self._connect() as conn:
            found = conn.execute(
                select(files)
                .where(files.c.finished_at.is_not(None), files.c.finished_at < cutoff)
                .order_by(files.c.id.desc())  # re-runs before the files they re-ran
            )
            return [_file_record(row) for row in found]

    def forget_file(self, file_id: int) -> None:
        """Delete a file and everything recorded of it (retention)."""
        with self._connect() as conn:
            conn.execute(update(files).where(files.c.rerun_of == file_id).values(rerun_of=None))
            conn.execute(delete(results).where(results.c.file_id == file_id))
            conn.execute(delete(rows).where(rows.c.file_id == file_id))
            conn.execute(delete(batches).where(batches.c.file_id == file_id))
            conn.execute(delete(files).where(files.c.id == file_id))

    def reruns_of(self, file_id: int) -> list[FileRecord]:
        with self._connect() as conn:
            found = conn.execute(select(files).where(files.c.rerun_of == file_id).order_by(files.c.id))
            return [_file_record(row) for row in found]

    def _row_counts(self, conn: Connection, file_id: int) -> dict[str, int]:
        found = conn.execute(
            select(rows.c.state, func.count()).where(rows.c.file_id == file_id).group_by(rows.c.state)
        )
        return {str(state): int(count) for state, count in found}

    def row_counts(self, file_id: int) -> dict[str, int]:
        with self._connect() as conn:
            return self._row_counts(conn, file_id)

    def summaries(self, file_ids: Sequence[int] | None = None, limit: int = 20) -> list[FileSummary]:
        with self._connect() as conn:
            query = select(files).order_by(files.c.id.desc())
            if file_ids is not None:
                query = query.where(files.c.id.in_(list(file_ids)))
            else:
                query = query.limit(limit)
            found = [_file_record(row) for row in conn.execute(query)]
            found.reverse()
            return [
                FileSummary(
                    file=record,
                    rows=self._row_counts(conn, record.id),
                    batches_in_flight=int(
                        conn.execute(
                            select(func.count())
                            .select_from(batches)
                            .where(
                                batches.c.file_id == record.id,
                                batches.c.state.in_(
                                    [BatchState.POSTING, BatchState.POSTED, BatchState.PARKED]
                                ),
                            )
                        ).scalar()
                        or 0
                    ),
                    **self._waiting(conn, record.id),
                )
                for record in found
            ]

    @staticmethod
    def _waiting(conn: Connection, file_id: int) -> dict[str, Any]:
        oldest = conn.execute(
            select(batches.c.import_set_id, batches.c.posted_at)
            .where(batches.c.file_id == file_id, batches.c.state == BatchState.POSTED)
            .order_by(batches.c.posted_at, batches.c.id)
            .limit(1)
        ).first()
        if oldest is None:
            return {}
        return {"waiting_on": oldest.import_set_id, "waiting_since": _aware(oldest.posted_at)}

    # -- rows and batches --------------------------------------------------------------------

    def record_invalid_rows(self, file_id: int, invalid: Sequence[tuple[int, str]]) -> None:
        if not invalid:
            return
        with self._connect() as conn:
            conn.execute(
                insert(rows),
                [
                    {"file_id": file_id, "source_row": number, "state": RowState.INVALID, "message": message}
                    for number, message in invalid
                ],
            )

    def known_source_rows(self, file_id: int) -> set[int]:
        """Source rows already recorded (sent, being sent, or invalid): a resumed file skips them."""
        with self._connect() as conn:
            return set(conn.execute(select(rows.c.source_row).where(rows.c.file_id == file_id)).scalars())

    def open_batch(
        self,
        file_id: int,
        source_rows: Sequence[int],
        *,
        body_bytes: int,
        run_after: str | None,
        multi_import_set_id: str | None,
    ) -> int:
        """Record a batch as ``posting`` with its rows, before its request is sent."""
        now = utcnow()
        with self._connect() as conn:
            batch_id = int(
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
                        posting_started_at=now,
                    )
                ).inserted_primary_key[0]
            )
            conn.execute(
                insert(rows),
                [
                    {
                        "file_id": file_id,
                        "source_row": number,
                        "batch_id": batch_id,
                        "batch_index": index,
                        "state": RowState.PENDING,
                    }
                    for index, number in enumerate(source_rows)
                ],
            )
            return batch_id

    def _batch_transition(
        self, conn: Connection, batch_id: int, allowed: Iterable[BatchState], new: BatchState, **values: Any
    ) -> None:
        state = conn.execute(
            select(batches.c.state).where(batches.c.id == batch_id).with_for_update()
        ).scalar()
        if state is None or BatchState(state) not in set(allowed):
            raise IllegalTransition(f"batch {batch_id} is {state}; it cannot become {new}")
        conn.execute(update(batches).where(batches.c.id == batch_id).values(state=new, **values))

    def mark_batch_posted(self, batch_id: int, import_set_id: str, multi_import_set_id: str | None) -> None:
        with self._connect() as conn:
            self._batch_transition(
                conn,
                batch_id,
                [BatchState.POSTING],
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
            self._batch_transition(
                conn,
                batch_id,
                [BatchState.POSTING],
                BatchState.PARKED,
                last_error=error,
                next_attempt_at=next_attempt_at,
            )

    def abandon_batch(self, batch_id: int, reason: str) -> None:
        """The batch never reached the instance: forget its rows so they are sent in a new batch."""
        with self._connect() as conn:
            self._batch_transition(
                conn,
                batch_id,
                [BatchState.POSTING, BatchState.PARKED],
                BatchState.ABANDONED,
                last_error=reason,
                completed_at=utcnow(),
            )
            conn.execute(delete(rows).where(rows.c.batch_id == batch_id))

    def batches(self, file_id: int, states: Iterable[BatchState] | None = None) -> list[BatchRecord]:
        with self._connect() as conn:
            query = select(batches).where(batches.c.file_id == file_id).order_by(batches.c.id)
            if states is not None:
                query = query.where(batches.c.state.in_([str(s) for s in states]))
            return [_batch_record(row) for row in conn.execute(query)]

    def batches_in_state(self, state: BatchState, *, mine: bool = False) -> list[BatchRecord]:
        """Batches in this state; ``mine``: only those of files this host took."""
        query = select(batches).where(batches.c.state == state).order_by(batches.c.id)
        if mine:
            query = query.join(files, files.c.id == batches.c.file_id).where(
                or_(files.c.host == self.host, files.c.host.is_(None))
            )
        with self._connect() as conn:
            return [_batch_record(row) for row in conn.execute(query)]

    @contextlib.contextmanager
    def posting_lock(self, group: str) -> Iterator[None]:
        """Files of one chain group are posted one at a time across every host sharing this
        ledger (a PostgreSQL advisory lock); with SQLite there is one host, and the daemon's
        one worker per group already does it."""
        if self.dialect != "postgresql":
            yield
            return
        key = int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "big", signed=True)
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()

    def last_import_set(self, file_id: int) -> str | None:
        """The import set of the file's latest accepted batch: the next batch runs after it."""
        with self._connect() as conn:
            return conn.execute(
                select(batches.c.import_set_id)
                .where(
                    batches.c.file_id == file_id,
                    batches.c.import_set_id.is_not(None),
                    batches.c.state.in_([BatchState.POSTED, BatchState.COMPLETE]),
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
        if sent_directly:
            allowed = [BatchState.POSTING]
        elif timed_out:
            allowed = [BatchState.POSTED]
        else:
            allowed = [BatchState.POSTED, BatchState.TIMED_OUT]
        with self._connect() as conn:
            missing = self._record_row_results(conn, batch_id, outcomes, allowed, timed_out=timed_out)
            if missing is None:
                raise IllegalTransition(f"batch {batch_id} is not waiting for results")
            return missing

    def record_results_of_batches(self, outcomes: Sequence[tuple[int, Sequence[RowResult]]]) -> list[int]:
        """``record_row_results`` for several processed batches in one transaction (few commits
        while a file's results stream in); returns the batches recorded: one no longer waiting
        (another process recorded it first) is left alone."""
        recorded = []
        allowed = [BatchState.POSTED, BatchState.TIMED_OUT]
        with self._connect() as conn:
            for batch_id, found in outcomes:
                if self._record_row_results(conn, batch_id, found, allowed, timed_out=False) is not None:
                    recorded.append(batch_id)
        return recorded

    def _record_row_results(
        self,
        conn: Connection,
        batch_id: int,
        outcomes: Sequence[RowResult],
        allowed: Sequence[BatchState],
        *,
        timed_out: bool,
    ) -> int | None:
        """The body of record_row_results; None (nothing written) when the batch is not in ``allowed``."""
        batch = conn.execute(select(batches).where(batches.c.id == batch_id).with_for_update()).first()
        if batch is None or batch.state not in allowed:
            return None
        if batch.state == BatchState.TIMED_OUT:
            # The import set was processed after all: its real results replace the timeout's.
            conn.execute(
                delete(results).where(
                    results.c.row_id.in_(select(rows.c.id).where(rows.c.batch_id == batch_id))
                )
            )
        members = {
            index: (row_id, source_row)
            for row_id, index, source_row in conn.execute(
                select(rows.c.id, rows.c.batch_index, rows.c.source_row).where(
                    rows.c.batch_id == batch_id
                )
            )
        }
        by_index: dict[int, list[RowResult]] = {}
        for outcome in outcomes:
            by_index.setdefault(outcome.batch_index, []).append(outcome)
        result_rows: list[dict[str, Any]] = []
        row_updates: list[dict[str, Any]] = []
        missing = 0
        for index, (row_id, _source_row) in members.items():
            found = by_index.get(index)
            if not found:
                missing += 1
                found = [
                    RowResult(
                        batch_index=index,
                        state=RowState.ERROR,
                        message=f"the instance did not store this row in import set "
                        f"{batch.import_set_id} (no staging row {index}): ServiceNow skips a row "
                        "over its row size limit (8126 bytes) or one it could not read; check the "
                        "row's values and the instance's import log",
                    )
                ]
            state = combined_row_state([r.state for r in found])
            messages = [r.message for r in found if r.message]
            row_updates.append(
                {
                    "b_id": row_id,
                    "b_state": state,
                    "b_message": "; ".join(dict.fromkeys(messages)) or None,
                    "b_staging": found[0].staging_sys_id,
                }
            )
            result_rows.extend(
                {
                    "row_id": row_id,
                    "file_id": batch.file_id,
                    "transform_map": r.transform_map,
                    "state": r.state,
                    "target_table": r.target_table,
                    "target_sys_id": r.target_sys_id,
                    "display_value": r.display_value,
                    "message": r.message,
                    "import_set_id": batch.import_set_id,
                    "staging_sys_id": r.staging_sys_id,
                }
                for r in found
            )
        if row_updates:
            conn.execute(
                update(rows)
                .where(rows.c.id == bindparam("b_id"))
                .values(
                    state=bindparam("b_state"),
                    message=bindparam("b_message"),
                    staging_sys_id=bindparam("b_staging"),
                ),
                row_updates,
            )
        if result_rows:
            conn.execute(insert(results), result_rows)
        new = BatchState.TIMED_OUT if timed_out else BatchState.COMPLETE
        self._batch_transition(conn, batch_id, allowed, new, completed_at=utcnow())
        if batch.state == BatchState.TIMED_OUT:
            self._refinish(conn, batch.file_id)
        return missing

    def _refinish(self, conn: Connection, file_id: int) -> None:
        """A finished file whose rows changed (timeout results replaced): its state follows them."""
        state = conn.execute(select(files.c.state).where(files.c.id == file_id)).scalar()
        if state not in (FileState.DONE, FileState.DONE_WITH_ERRORS):
            return
        counts = self._row_counts(conn, file_id)
        failed = any(counts.get(s, 0) for s in FAILED_ROW_STATES)
        new = FileState.DONE_WITH_ERRORS if failed else FileState.DONE
        if new != state:
            self._transition(conn, file_id, [FileState(state)], new)

    def waiting_batches(self, *, mine: bool = False) -> list[BatchRecord]:
        """Batches whose import set is still to be looked at: posted ones, and timed-out ones
        (a later poll may find their set processed)."""
        return self.batches_in_state(BatchState.POSTED, mine=mine) + self.batches_in_state(
            BatchState.TIMED_OUT, mine=mine
        )

    def failed_source_rows(self, file_id: int) -> set[int]:
        with self._connect() as conn:
            return set(
                conn.execute(
                    select(rows.c.source_row).where(
                        rows.c.file_id == file_id, rows.c.state.in_([str(s) for s in FAILED_ROW_STATES])
                    )
                ).scalars()
            )

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
        with self.engine.connect() as conn:
            # A report streams while the person reads it: it must not hold the write lock.
            for row in conn.execution_options(yield_per=2000, read_only=True).execute(query):
                yield {
                    "file_id": row.file_id,
                    "source_row": row.source_row,
                    "state": row.result_state or row.row_state,
                    "transform_map": row.transform_map or "",
                    "target_table": row.target_table or "",
                    "target_sys_id": row.target_sys_id or "",
                    "display_value": row.display_value or "",
                    "message": (row.result_message if row.result_state else row.row_message) or "",
                    "import_set": row.import_set_id or row.batch_import_set or "",
                    "staging_sys_id": row.staging_sys_id or row.row_staging or "",
                }

    def is_final(self, file_id: int) -> bool:
        record = self.get_file(file_id)
        return record is not None and record.state in FINAL_FILE_STATES
