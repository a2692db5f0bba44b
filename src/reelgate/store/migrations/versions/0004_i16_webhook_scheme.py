"""webhook signing scheme per account

Revision ID: 0004_i16
Revises: 0004_i14 (re-chained after main merged issue 14)
Create Date: 2026-11-26 14:50:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i16"
down_revision = "0004_i14"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_scheme", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("webhook_scheme")
