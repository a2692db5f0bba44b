"""predictions.dialect: the door a prediction came in by (v3, google, openai)

Revision ID: 0004_i13
Revises: 0004_i10 (chained after main's migrations when merging main)
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i13"
down_revision = "0004_i10"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        # Every prediction made before this migration came through the v3 API.
        batch_op.add_column(
            sa.Column("dialect", sa.String(length=16), server_default="v3", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("dialect")
