"""The tables. The predictions row is the truth about a prediction: queues only point at it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
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
    UniqueConstraint,
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
    # Available balance in micro-units of the operator's currency (1 USD = 1_000_000).
    # It moves only together with a ledger entry, in the same transaction (store/ledger.py).
    Column("balance", BigInteger, nullable=False, server_default="0"),
    # Per-account limits; NULL means the server's default.
    Column("rate_per_minute", Integer, nullable=True),
    Column("max_concurrent", Integer, nullable=True),
    Column("disabled_at", UTCDateTime(), nullable=True),
    # Webhook signing secret ("whsec_..."), made on first use.
    Column("webhook_secret", String(100), nullable=True),
    # How webhooks are signed (jobs/signing.py): "wavespeed" or "standard"; NULL means the
    # dialect's default (WaveSpeed's v3 form for the v3 dialect).
    Column("webhook_scheme", String(16), nullable=True),
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
    # Public model names this key may use; NULL means all.
    Column("allowed_models", JSON, nullable=True),
    # Unfinished predictions of this key, kept in step with the rows in the same
    # transactions, so the concurrency limit is one conditional UPDATE.
    Column("running", Integer, nullable=False, server_default="0"),
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
    # Price held when accepted (micro-units); 0 for free backends.
    Column("price", BigInteger, nullable=False, server_default="0"),
    # Where to POST the prediction when it ends, and the base URL its links are built on.
    Column("webhook", Text, nullable=True),
    Column("base_url", Text, nullable=True),
    Column("outputs_deleted_at", UTCDateTime(), nullable=True),
    # Denoising progress reported by a local worker: {"step": i, "steps": n}.
    Column("progress", JSON, nullable=True),
    # The user asked to stop a running prediction; its worker ends it between two steps.
    Column("cancel_requested_at", UTCDateTime(), nullable=True),
    # Storage key of a JPEG poster frame taken from the video when it was stored.
    Column("poster", Text, nullable=True),
    # A submission recorded as intended before it is sent upstream (JSON: what, where, when).
    # Set with no upstream_ref, it means a worker may have reached the upstream and died
    # before it could write the handle: the backend's unconfirmed-submission policy decides.
    Column("submit_intent", Text, nullable=True),
    # The client's Idempotency-Key and a hash of its request: the same key and body return
    # this prediction again instead of creating (and charging) another.
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=True),
    # The API dialect the prediction was asked through: v3, google or openai.
    Column("dialect", String(16), nullable=False, server_default="v3"),
    Index("ix_predictions_account_created", "account_id", "created_at"),
    Index("ix_predictions_status_lease", "status", "lease_expires_at"),
    Index("uq_predictions_idempotency", "account_id", "idempotency_key", unique=True),
)

# Append-only: rows are inserted, never updated or deleted. ``delta`` is the entry's effect
# on the account's available balance; ``amount`` the money it is about (a capture moves no
# balance, it makes a hold final). One hold, and at most one capture or release, per
# prediction: the unique constraint makes a double capture impossible, not just unlikely.
ledger = Table(
    "ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("prediction_id", String(32), nullable=True),
    Column("kind", String(16), nullable=False),  # credit, debit, hold, capture, release
    Column("amount", BigInteger, nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("model", String(64), nullable=True),
    Column("note", Text, nullable=False, server_default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    UniqueConstraint("prediction_id", "kind"),
    Index("ix_ledger_account_created", "account_id", "created_at"),
)

# Every content-policy block, for the operator to review.
policy_blocks = Table(
    "policy_blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", String(32), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("model", String(64), nullable=False),
    Column("scene", String(64), nullable=False),
    Column("category", String(64), nullable=False),
    Column("field", String(64), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_policy_blocks_created", "created_at"),
)

# Files users upload for image inputs (WaveSpeed's upload flow).
uploads = Table(
    "uploads",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", String(32), ForeignKey("accounts.id"), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size", BigInteger, nullable=False),  # declared; the PUT must match it
    Column("status", String(16), nullable=False),  # pending, ready
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_uploads_account_expires", "account_id", "expires_at"),
)

# One row per webhook message: written in the transaction that ends the prediction, so a
# crash between the end and the POST loses nothing; delivered at least once.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id header ("msg_...")
    Column("prediction_id", String(32), nullable=False, index=True),
    Column("account_id", String(32), nullable=False),
    Column("url", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, delivered, failed
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("lease_expires_at", UTCDateTime(), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)

# One row (id 1) whose version moves whenever a key or an account's access changes (bumped
# by triggers, see migration 0004_i11): API processes cache key records and drop the cache
# when it moves.
auth_version = Table(
    "auth_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", BigInteger, nullable=False, server_default="0"),
)

# Statuses a prediction can be in; "created" and "processing" are unfinished.
CREATED = "created"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
UNFINISHED = (CREATED, PROCESSING)
ENDED = (COMPLETED, FAILED, CANCELLED)
