"""exactly once: submission intents, idempotency keys

Revision ID: 0004_i10
Revises: 0004_i16
Create Date: 2026-11-26 14:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i10"
down_revision = "0004_i16"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("submit_intent", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        # NULL keys never collide (SQLite and PostgreSQL alike), so rows without a key are
        # not constrained.
        batch_op.create_index(
            "uq_predictions_idempotency", ["account_id", "idempotency_key"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("uq_predictions_idempotency")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("idempotency_key")
        batch_op.drop_column("submit_intent")
