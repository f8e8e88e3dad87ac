"""Which host took a file: with a PostgreSQL ledger shared by several hosts, each resumes,
posts and polls only its own files (the file itself sits in that host's processing/).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("host", sa.String(255)))
        batch.create_index("ix_files_host_state", ["host", "state"])


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_host_state")
        batch.drop_column("host")
