"""The ledger: what happened to every file, batch and row, as an explicit state machine.

``Ledger`` is the one object the rest of importer holds. It is built from the ledger's rooms:
it owns a ``LedgerEngine`` (engine.py: URL, SQLite pragmas, migrations, error translation)
and combines the transitions (transitions.py: the state machine) with the queries
(queries.py: reports, summaries, metrics, retention). The rooms are combined as classes
rather than delegated to, because they share nothing but the engine and the host: each
method is written once, where its room is, and callers keep calling ``ledger.<method>``.
"""

from __future__ import annotations

import contextlib
import socket

from sqlalchemy import Engine

from importer.ledger.engine import LedgerEngine
from importer.ledger.queries import LedgerQueries
from importer.ledger.transitions import LedgerTransitions


class Ledger(LedgerTransitions, LedgerQueries):
    def __init__(self, url: str, *, migrate: bool = True, host: str | None = None) -> None:
        self.url = url
        self.host = host or socket.gethostname()
        self.db = LedgerEngine(url)
        if migrate:
            self.migrate()

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def migrate(self) -> None:
        """Bring the schema to the newest version; an upgrade never drops a ledger."""
        try:
            self.db.migrate()
        except BaseException:
            self.db.close()
            raise

    def posting_lock(self, group: str) -> contextlib.AbstractContextManager[None]:
        return self.db.posting_lock(group)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
