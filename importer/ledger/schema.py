"""Ledger tables (SQLAlchemy Core). Alembic migrations under migrations/ create them; keep both in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

files = Table(
    "files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False),  # the name as dropped
    Column("relative_path", String(1024), nullable=False),  # relative to the inbox (or the given path)
    Column("path", String(4096), nullable=False),  # where the file is now (processing, archive, failed)
    Column("sha256", String(64), nullable=False, index=True),
    Column("size", BigInteger, nullable=False),
    Column("mapping", String(255)),
    Column("staging_table", String(255)),
    Column("state", String(32), nullable=False, index=True),
    Column("rerun_of", Integer, ForeignKey("files.id")),
    Column("rerun_scope", String(16)),  # all | failed
    Column("multi_import_set_id", String(64)),
    Column("error", Text),  # why the file as a whole was refused
    Column("report_path", String(4096)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("host", String(255)),  # the host that took the file (migration 0002)
    # Attempts at processing the file begun and not (yet) ended; reset when one ends (migration 0003).
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_files_host_state", "host", "state"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_id", Integer, ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    Column("state", String(32), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("body_bytes", Integer, nullable=False),
    Column("first_source_row", Integer, nullable=False),
    Column("import_set_id", String(64)),
    Column("multi_import_set_id", String(64)),
    Column("run_after", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("posting_started_at", DateTime(timezone=True)),
    Column("posted_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Index("ix_batches_file_state", "file_id", "state"),
    Index("ix_batches_state", "state"),
)

rows = Table(
    "rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_id", Integer, ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    Column("source_row", Integer, nullable=False),
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE")),
    Column("batch_index", Integer),  # position in the batch = sys_import_row in the import set
    Column("state", String(32), nullable=False),
    Column("message", Text),
    Column("staging_sys_id", String(64)),
    Index("ix_rows_file_source", "file_id", "source_row"),
    Index("ix_rows_batch", "batch_id", "batch_index"),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("row_id", Integer, ForeignKey("rows.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("file_id", Integer, ForeignKey("files.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("transform_map", String(255)),
    Column("state", String(32), nullable=False),
    Column("target_table", String(255)),
    Column("target_sys_id", String(64)),
    Column("display_value", Text),
    Column("message", Text),
    Column("import_set_id", String(64)),
    Column("staging_sys_id", String(64)),
)
