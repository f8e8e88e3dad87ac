"""The first ledger: files, batches, rows, per-transform-map results.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("relative_path", sa.String(1024), nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mapping", sa.String(255)),
        sa.Column("staging_table", sa.String(255)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("rerun_of", sa.Integer, sa.ForeignKey("files.id")),
        sa.Column("rerun_scope", sa.String(16)),
        sa.Column("multi_import_set_id", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("report_path", sa.String(4096)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_files_sha256", "files", ["sha256"])
    op.create_index("ix_files_state", "files", ["state"])
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("row_count", sa.Integer, nullable=False),
        sa.Column("body_bytes", sa.Integer, nullable=False),
        sa.Column("first_source_row", sa.Integer, nullable=False),
        sa.Column("import_set_id", sa.String(64)),
        sa.Column("multi_import_set_id", sa.String(64)),
        sa.Column("run_after", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("posting_started_at", sa.DateTime(timezone=True)),
        sa.Column("posted_at", sa.DateTime(timezone=True)),
        sa.Column("completed_at", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_batches_file_state", "batches", ["file_id", "state"])
    op.create_index("ix_batches_state", "batches", ["state"])
    op.create_table(
        "rows",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id", ondelete="CASCADE")),
        sa.Column("batch_index", sa.Integer),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("staging_sys_id", sa.String(64)),
    )
    op.create_index("ix_rows_file_source", "rows", ["file_id", "source_row"])
    op.create_index("ix_rows_batch", "rows", ["batch_id", "batch_index"])
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("row_id", sa.Integer, sa.ForeignKey("rows.id", ondelete="CASCADE"), nullable=False),
        sa.Column("file_id", sa.Integer, sa.ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
        sa.Column("transform_map", sa.String(255)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("target_table", sa.String(255)),
        sa.Column("target_sys_id", sa.String(64)),
        sa.Column("display_value", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("import_set_id", sa.String(64)),
        sa.Column("staging_sys_id", sa.String(64)),
    )
    op.create_index("ix_results_row_id", "results", ["row_id"])
    op.create_index("ix_results_file_id", "results", ["file_id"])


def downgrade() -> None:
    op.drop_table("results")
    op.drop_table("rows")
    op.drop_table("batches")
    op.drop_table("files")
