"""The tables. The predictions row is the truth about a prediction: queues only point at it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
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
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    # The first characters of the key, shown in listings so people can tell keys apart.
    Column("prefix", String(16), nullable=False),
    # SHA-256 of the whole key: keys are 256-bit random strings, so a fast hash is enough
    # (no password-style stretching needed) and lookups stay one indexed read.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("key_id", String(32), ForeignKey("api_keys.id"), nullable=False),
    Column("model", String(64), nullable=False),
    Column("scene", String(64), nullable=False),
    Column("backend", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    # The validated request (what the backend needs), and where its fetched inputs lie.
    Column("params", JSON, nullable=False),
    Column("inputs", JSON, nullable=False),
    # Storage keys of the produced videos.
    Column("outputs", JSON, nullable=False),
    Column("error", Text, nullable=False, default=""),
    Column("nsfw", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    # Who runs it and until when: an expired lease means the worker died.
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    # An upstream handle (e.g. Google's operation name), written before waiting on it.
    Column("upstream_ref", Text, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_predictions_account_created", "account_id", "created_at"),
    Index("ix_predictions_status_lease", "status", "lease_expires_at"),
)

# Statuses a prediction can be in; "created" and "processing" are unfinished.
CREATED = "created"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
UNFINISHED = (CREATED, PROCESSING)
