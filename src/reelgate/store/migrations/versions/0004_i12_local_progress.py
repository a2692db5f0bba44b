"""local backend: progress of a running prediction, and cancel requests

Revision ID: 0004_i12
Revises: 0004_i13 (chained after main's migrations at the merge)
"""

import sqlalchemy as sa
from alembic import op

import reelgate.store.tables

revision = "0004_i12"
down_revision = "0004_i13"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "cancel_requested_at",
                reelgate.store.tables.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("cancel_requested_at")
        batch_op.drop_column("progress")
