"""The ledger: files, batches, rows and per-transform-map results (SQLAlchemy 2, Alembic)."""

from importer.errors import LedgerError
from importer.ledger.records import REPORT_COLUMNS, BatchRecord, FileRecord, FileSummary, RowResult
from importer.ledger.states import BatchState, FileState, RowState
from importer.ledger.store import Ledger
from importer.ledger.transitions import IllegalTransition

__all__ = [
    "REPORT_COLUMNS",
    "BatchRecord",
    "BatchState",
    "FileRecord",
    "FileState",
    "FileSummary",
    "IllegalTransition",
    "Ledger",
    "LedgerError",
    "RowResult",
    "RowState",
]
