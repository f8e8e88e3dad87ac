"""The ledger's engine room: the database URL, SQLite's pragmas and locking, migrations, and
the one place a database error becomes a message for the person who must act.

Alembic is imported only when a ledger is new or behind: a command's start reads
``alembic_version`` with SQLAlchemy and goes on when it already holds ``HEAD_REVISION``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url

from importer.errors import (
    ConfigError,
    LedgerCorrupt,
    LedgerError,
    LedgerFull,
    LedgerLocked,
    LedgerReadOnly,
    LedgerUnreachable,
)

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest migration in MIGRATIONS/versions (a test holds the two together).
HEAD_REVISION = "0003"
DEFAULT_BUSY_TIMEOUT_S = 30.0


def _prepare_sqlite(url: URL) -> None:
    """Create the folder and the database file private to the service user before SQLite does."""
    database = url.database
    if not database or database == ":memory:":
        return
    path = Path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
    except OSError as exc:
        raise LedgerReadOnly(
            f"cannot create the ledger {path} ({exc.strerror}); give the service user write access "
            f"to {path.parent} or set paths.ledger"
        ) from exc


def _busy_timeout_s(url: URL) -> float:
    # ``sqlite:///ledger.db?timeout=5``: how long a transaction waits for another process's lock.
    value = url.query.get("timeout")
    try:
        return float(value) if isinstance(value, str) else DEFAULT_BUSY_TIMEOUT_S
    except ValueError as exc:
        raise ConfigError(f"paths.ledger: timeout={value!r} is not a number of seconds") from exc


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE: take the write lock when the transaction starts, so that two processes (the
    # daemon and a command run beside it) checking a state and then changing it never both
    # pass the check; the loser waits (busy_timeout), then sees the new state. Streaming reads
    # (reports) say read_only and take no lock.
    read_only = conn.get_execution_options().get("read_only", False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


# SQLite's primary result codes (sqlite3 exceptions carry them as sqlite_errorname).
_SQLITE_KINDS = {
    "SQLITE_BUSY": "locked",
    "SQLITE_LOCKED": "locked",
    "SQLITE_FULL": "full",
    "SQLITE_CORRUPT": "corrupt",
    "SQLITE_NOTADB": "corrupt",
    "SQLITE_READONLY": "read-only",
    "SQLITE_CANTOPEN": "read-only",
    "SQLITE_PERM": "read-only",
}
# PostgreSQL SQLSTATEs (and their classes, the first two characters).
_PG_KINDS = {
    "53100": "full",  # disk_full
    "53": "full",  # insufficient resources
    "25006": "read-only",  # read_only_sql_transaction
    "42501": "read-only",  # insufficient_privilege
    "55P03": "locked",  # lock_not_available
    "57014": "locked",  # query_canceled: lock_timeout / statement_timeout
    "XX001": "corrupt",  # data_corrupted
    "XX002": "corrupt",  # index_corrupted
    "08": "unreachable",  # connection exception
    "28": "unreachable",  # invalid authorization
    "57P": "unreachable",  # the server is shutting down
    "3D000": "unreachable",  # the database does not exist
}


def _kind_of(error: BaseException, is_disconnect: bool) -> str | None:
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str):
        return _SQLITE_KINDS.get("_".join(name.split("_")[:2]))  # SQLITE_BUSY_SNAPSHOT: SQLITE_BUSY
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        for prefix in (sqlstate, sqlstate[:3], sqlstate[:2]):
            if prefix in _PG_KINDS:
                return _PG_KINDS[prefix]
        return "unreachable" if is_disconnect else None
    if is_disconnect or error.__class__.__module__.startswith("psycopg"):
        # psycopg raises OperationalError without a SQLSTATE when it cannot connect at all.
        return "unreachable" if error.__class__.__name__ == "OperationalError" else None
    return None


class LedgerEngine:
    """One database behind the ledger: its URL, connections and transactions, migrations."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError for any malformed URL
            raise ConfigError(f"paths.ledger: {url!r} is not a database URL ({exc})") from exc
        self.dialect = parsed.get_backend_name()
        self.busy_timeout_s = DEFAULT_BUSY_TIMEOUT_S
        if self.dialect == "sqlite":
            self.busy_timeout_s = _busy_timeout_s(parsed)
            _prepare_sqlite(parsed)
        elif parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver we ship
        database = parsed.database if self.dialect == "sqlite" else None
        self.path = Path(database) if database and database != ":memory:" else None
        # What messages name: the file, or the URL without its password.
        self.where = str(self.path) if self.path else parsed.render_as_string(hide_password=True)
        try:
            # A file on this host needs no ping before each use (a ping is a round trip per transaction).
            self.engine: Engine = create_engine(parsed, pool_pre_ping=self.dialect != "sqlite")
        except Exception as exc:
            raise ConfigError(f"paths.ledger: cannot use {self.where}: {exc}") from exc
        event.listen(self.engine, "handle_error", self._translate_error)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", self._sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)

    # -- the one place database errors are translated ------------------------------------------

    def _translate_error(self, context: ExceptionContext) -> BaseException | None:
        """Every database error, from any statement, commit or connect, becomes a LedgerError
        saying what happened to which ledger and what to do (``raise ... from`` the original)."""
        if context.is_pre_ping:
            return None  # the pool reconnects by itself
        error = context.original_exception
        return self.translated(error, is_disconnect=context.is_disconnect)

    def translated(self, error: BaseException, *, is_disconnect: bool = False) -> LedgerError:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        kind = _kind_of(error, is_disconnect)
        where = self.where
        if kind == "locked":
            return LedgerLocked(
                f"the ledger {where} is locked by another process ({detail}, waited "
                f"{self.busy_timeout_s:g} s); let it finish (an `importer run` or a command beside it) "
                "and run this again"
            )
        if kind == "full":
            folder = self.path.parent if self.path else "the database server"
            return LedgerFull(
                f"the ledger {where} cannot be written: the disk is full ({detail}); free space on "
                f"{folder} and run this again (nothing recorded is lost)"
            )
        if kind == "corrupt":
            return LedgerCorrupt(
                f"{where} is not a valid ledger database ({detail}); restore it from the backup, "
                "see README Back up (importer does not recreate it)"
            )
        if kind == "unreachable":
            return LedgerUnreachable(
                f"cannot reach the ledger database {where} ({detail}); check that the server is up "
                "and that paths.ledger names it with the right user"
            )
        if kind == "read-only":
            return LedgerReadOnly(
                f"the ledger {where} is read-only ({detail}); give the service user write access "
                "to it and to its folder"
            )
        return LedgerError(f"the ledger {where} failed: {error.__class__.__name__}: {detail}")

    # -- connections -----------------------------------------------------------------------------

    def _sqlite_pragmas(self, dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling starts transactions late (and DDL outside them);
        # transactions are begun explicitly instead (_sqlite_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    def begin(self) -> contextlib.AbstractContextManager[Connection]:
        """A transaction (SQLite: holding the write lock), committed when the block ends."""
        return self.engine.begin()

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read that may stream for long (a report): it takes no write lock."""
        with self.engine.connect() as conn:
            yield conn.execution_options(read_only=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- migrations --------------------------------------------------------------------------------

    def revision(self) -> str | None:
        """The schema revision the ledger holds; None for a new ledger."""
        with self.reading() as conn:
            try:
                found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except LedgerError as exc:
                if not _is_missing_table(exc):
                    raise
                return None
            return str(found) if found is not None else None

    def migrate(self) -> None:
        """Bring the schema to the newest version (Alembic); an upgrade never drops a ledger."""
        if self.revision() == HEAD_REVISION:
            return
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._migration_lock(), self.engine.begin() as connection:
            if self.dialect == "postgresql":
                # Several hosts (or a command beside the daemon) may start at once: one migrates.
                connection.execute(text("SELECT pg_advisory_xact_lock(7203554128)"))
            cfg.attributes["connection"] = connection
            try:
                command.upgrade(cfg, "head")
            except LedgerError:
                raise  # the database's own trouble, already translated
            except Exception as exc:  # alembic's own (a revision this version does not know)
                raise LedgerError(
                    f"cannot migrate the ledger {self.where}: {exc}; is it from a newer importer?"
                ) from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite runs DDL outside transactions: a file lock keeps two processes from migrating at once."""
        if self.path is None:
            yield
            return
        fd = os.open(f"{self.path}.migrate.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

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


def _is_missing_table(exc: LedgerError) -> bool:
    cause = exc.__cause__
    original = getattr(cause, "orig", cause)
    message = str(original)
    return "no such table" in message or getattr(original, "sqlstate", None) == "42P01"
