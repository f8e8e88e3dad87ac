"""How many times in a row a file's processing began without ending: a process that died (crash,
kill, out of memory, watchdog) while working on a file leaves it counted, and the next start
quarantines a file that keeps taking the process down instead of resuming it into the same fate.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("attempts")
