"""Upload records, in SQL: one row per uploaded input image (its bytes are in the Storage,
media/uploads.py), with the account's quota read from the rows that have not expired."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update

from reelgate.store.repo import Store, new_id
from reelgate.store.tables import uploads, utcnow


@dataclass(frozen=True)
class Upload:
    id: str
    account_id: str
    filename: str
    content_type: str
    size: int  # declared; a PUT must match it
    status: str  # pending (a ticket waiting for its PUT), ready
    created_at: datetime
    expires_at: datetime


class UploadStore:
    def __init__(self, store: Store) -> None:
        self.engine = store.engine

    async def bytes_in_use(self, account_id: str) -> int:
        """Bytes of the account's uploads that have not expired (its quota's use)."""
        async with self.engine.connect() as conn:
            used = (
                await conn.execute(
                    select(func.coalesce(func.sum(uploads.c.size), 0)).where(
                        uploads.c.account_id == account_id, uploads.c.expires_at > utcnow()
                    )
                )
            ).scalar_one()
        return int(used)

    async def insert(
        self, *, account_id: str, filename: str, content_type: str, size: int, status: str,
        ttl_s: float, upload_id: str | None = None,
    ) -> Upload:
        """Record a new upload that expires ``ttl_s`` seconds from now."""
        now = utcnow()
        record = Upload(
            id=upload_id or new_id(),
            account_id=account_id,
            filename=filename,
            content_type=content_type,
            size=size,
            status=status,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        async with self.engine.begin() as conn:
            await conn.execute(insert(uploads).values(**asdict(record)))
        return record

    async def get(self, upload_id: str) -> Upload | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(uploads).where(uploads.c.id == upload_id))).first()
        return Upload(**row._mapping) if row else None

    async def mark_ready(self, upload_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(uploads).where(uploads.c.id == upload_id).values(status="ready")
            )

    async def expired(self, limit: int = 500) -> list[str]:
        """Ids of uploads past their expiry (at most ``limit``)."""
        async with self.engine.connect() as conn:
            return [
                r[0]
                for r in await conn.execute(
                    select(uploads.c.id).where(uploads.c.expires_at <= utcnow()).limit(limit)
                )
            ]

    async def delete(self, upload_ids: list[str]) -> None:
        if not upload_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(uploads.delete().where(uploads.c.id.in_(upload_ids)))
