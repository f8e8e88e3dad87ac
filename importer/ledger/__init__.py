"""The ledger: files, batches, rows and per-transform-map results (SQLAlchemy 2, Alembic)."""

from importer.ledger.states import BatchState, FileState, RowState
from importer.ledger.store import (
    REPORT_COLUMNS,
    BatchRecord,
    FileRecord,
    FileSummary,
    IllegalTransition,
    Ledger,
    LedgerError,
    RowResult,
)

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
