"""poster frame of a prediction's video (the console's thumbnails)

Revision ID: 0004_i14
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i14"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("poster", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("poster")
