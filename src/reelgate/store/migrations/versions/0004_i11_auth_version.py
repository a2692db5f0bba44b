"""auth version: one counter that moves whenever a key or an account's access changes

Revision ID: 0004_i11
Revises: 0004_i12

API processes keep key records in memory and re-read this one row at most every half
second; a change means "drop the cache". Triggers bump it, so every writer (the CLI, the
admin API, the console, a hand-written UPDATE) invalidates the caches without having to
remember to. Only the columns that decide access fire them: ``api_keys.running`` moves on
every create and must not flush the caches.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_i11"
down_revision = "0004_i12"
branch_labels = None
depends_on = None

_BUMP = "UPDATE auth_version SET version = version + 1 WHERE id = 1"
_TRIGGERS = {
    # name: (event, table)
    "auth_version_keys_update": (
        "UPDATE OF revoked_at, allowed_models, key_hash, account_id", "api_keys"),
    "auth_version_keys_delete": ("DELETE", "api_keys"),
    "auth_version_accounts_update": (
        "UPDATE OF disabled_at, rate_per_minute, max_concurrent", "accounts"),
    "auth_version_accounts_delete": ("DELETE", "accounts"),
}


def upgrade() -> None:
    op.create_table(
        "auth_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_version")),
    )
    op.execute("INSERT INTO auth_version (id, version) VALUES (1, 0)")
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION reelgate_bump_auth_version() RETURNS trigger AS $$ "
            f"BEGIN {_BUMP}; RETURN NULL; END $$ LANGUAGE plpgsql"
        )
        for name, (event, table) in _TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION reelgate_bump_auth_version()")
    else:
        for name, (event, table) in _TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} "
                       f"BEGIN {_BUMP}; END")


def downgrade() -> None:
    for name, (_event, table) in _TRIGGERS.items():
        if op.get_context().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS reelgate_bump_auth_version()")
    op.drop_table("auth_version")
