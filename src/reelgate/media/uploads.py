"""User uploads for image inputs: WaveSpeed's two-step flow (ask for a ticket, PUT the bytes)
and a one-step binary upload, with size and type limits, a per-account quota and expiry.

An upload's ``download_url`` is a signed link to this server. When such a link comes back as
an ``image``/``images[]``/``last_image``, intake reads the file from storage instead of
fetching it over HTTP (the fetcher would rightly refuse our own, possibly private, address).
The bytes live in the Storage (key ``uploads/{id}``), not in the API process's data dir, so
the PUT and the create may reach different API processes on different machines."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from reelgate.errors import ApiError, InvalidInput
from reelgate.media.images import check_image
from reelgate.media.storage import Storage, StorageKeyMissing, UrlSigner
from reelgate.store.repo import new_id
from reelgate.store.tables import utcnow
from reelgate.store.uploads import Upload, UploadStore

# What an upload may be: the image types the fetcher and the backends accept.
CONTENT_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
}
_EXTENSIONS = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
}
PUT_TTL_S = 3600
_DOWNLOAD_PATH = re.compile(r"^/media/uploads/([0-9a-f]{32})/[^/]+$")


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    ttl_s: int
    quota_bytes: int


def _safe_filename(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip() or "upload"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base)[:120]


def content_type_for(filename: str, declared: str | None) -> str:
    ctype = (declared or "").split(";")[0].strip().lower()
    if not ctype or ctype == "application/octet-stream":
        ctype = _EXTENSIONS.get(Path(filename).suffix.lower(), "")
    if ctype not in CONTENT_TYPES:
        raise InvalidInput(
            "content_type",
            f"must be one of {', '.join(CONTENT_TYPES)} (got {ctype or 'unknown'!r})",
        )
    return ctype


def _view(record: Upload) -> dict[str, Any]:
    # The routes and pages read an upload as a mapping of its fields.
    return dataclasses.asdict(record)


class Uploads:
    def __init__(
        self, rows: UploadStore, root: Path, signer: UrlSigner, limits: UploadLimits,
        storage: Storage,
    ) -> None:
        self.rows = rows
        # Where uploads lived before they went through the storage; still read from, so
        # links handed out before an upgrade keep working until they expire.
        self.root = root
        self.signer = signer
        self.limits = limits
        self.storage = storage

    def path(self, upload_id: str) -> Path:
        return self.root / upload_id

    @staticmethod
    def key(upload_id: str) -> str:
        return f"uploads/{upload_id}"

    async def read(self, upload_id: str) -> bytes | None:
        """The uploaded bytes, or None if they are gone."""
        try:
            return await self.storage.get_bytes(self.key(upload_id))
        except StorageKeyMissing:
            legacy = self.path(upload_id)
            return await asyncio.to_thread(legacy.read_bytes) if legacy.is_file() else None

    # --- URLs ------------------------------------------------------------------------------

    def put_query(self, upload_id: str) -> str:
        """The signed query string (``expires``, ``signature``) that lets the bytes of a
        ticket be PUT, for the route that takes them (the API builds the URL)."""
        expires = int(utcnow().timestamp()) + PUT_TTL_S
        sig = self.signer.signature(f"upload-put/{upload_id}", expires)
        return urlencode({"expires": expires, "signature": sig})

    def download_url(
        self, upload_id: str, filename: str, expires_at: datetime, base_url: str
    ) -> str:
        expires = int(expires_at.timestamp())
        sig = self.signer.signature(f"uploads/{upload_id}", expires)
        return (
            f"{base_url}/media/uploads/{upload_id}/{quote(filename)}?"
            f"{urlencode({'expires': expires, 'signature': sig})}"
        )

    def verify_put(self, upload_id: str, expires: int, signature: str) -> bool:
        return self.signer.verify(f"upload-put/{upload_id}", expires, signature)

    def verify_download(self, upload_id: str, expires: int, signature: str) -> bool:
        return self.signer.verify(f"uploads/{upload_id}", expires, signature)

    # --- the flow --------------------------------------------------------------------------

    async def _check_quota(self, account_id: str, size: int) -> None:
        used = await self.rows.bytes_in_use(account_id)
        if used + size > self.limits.quota_bytes:
            raise ApiError(
                403,
                f"Upload quota exceeded: {used} of {self.limits.quota_bytes} bytes in use "
                "by uploads that have not expired yet",
            )

    def _check_size(self, size: int) -> None:
        if size <= 0:
            raise InvalidInput("size", "must be a positive number of bytes")
        if size > self.limits.max_bytes:
            raise InvalidInput(
                "size", f"must be at most {self.limits.max_bytes} bytes (got {size})"
            )

    async def create_ticket(
        self, account_id: str, filename: str, size: int, content_type: str | None
    ) -> dict[str, Any]:
        filename = _safe_filename(filename)
        ctype = content_type_for(filename, content_type)
        self._check_size(size)
        await self._check_quota(account_id, size)
        return _view(await self.rows.insert(
            account_id=account_id, filename=filename, content_type=ctype, size=size,
            status="pending", ttl_s=self.limits.ttl_s))

    async def get(self, upload_id: str) -> dict[str, Any] | None:
        record = await self.rows.get(upload_id)
        return _view(record) if record else None

    async def receive(self, upload_id: str, chunks: Any) -> dict[str, Any]:
        """Store the PUT body of a pending upload: exactly the declared size, an image."""
        record = await self.get(upload_id)
        if record is None or record["expires_at"] <= utcnow():
            raise ApiError(404, "Upload not found or expired")
        if record["status"] != "pending":
            raise ApiError(400, "This upload already has its file")
        body = bytearray()
        async for chunk in chunks:
            body += chunk
            if len(body) > record["size"]:
                raise InvalidInput(
                    "body", f"is larger than the declared size ({record['size']} bytes)"
                )
        if len(body) != record["size"]:
            raise InvalidInput(
                "body", f"has {len(body)} bytes but the upload declared {record['size']}"
            )
        await self._store(upload_id, bytes(body), record["content_type"])
        await self.rows.mark_ready(upload_id)
        return record

    async def create_ready(
        self, account_id: str, filename: str, content_type: str | None, data: bytes
    ) -> dict[str, Any]:
        """The one-step upload: the bytes come with the request."""
        filename = _safe_filename(filename)
        ctype = content_type_for(filename, content_type)
        self._check_size(len(data))
        await self._check_quota(account_id, len(data))
        upload_id = new_id()
        await self._store(upload_id, data, ctype, field="file")
        return _view(await self.rows.insert(
            account_id=account_id, filename=filename, content_type=ctype, size=len(data),
            status="ready", ttl_s=self.limits.ttl_s, upload_id=upload_id))

    async def _store(self, upload_id: str, data: bytes, content_type: str,
                     field: str = "body") -> None:
        await asyncio.to_thread(check_image, data, field=field)
        await self.storage.put_bytes(self.key(upload_id), data, content_type)

    async def resolve(self, url: str, field: str) -> bytes | None:
        """The bytes of one of our own upload links, or None if ``url`` is not one."""
        parts = urlsplit(url.strip())
        match = _DOWNLOAD_PATH.match(parts.path)
        if parts.scheme not in ("http", "https") or match is None:
            return None
        upload_id = match.group(1)
        q = parse_qs(parts.query)
        try:
            expires = int(q["expires"][0])
            signature = q["signature"][0]
        except (KeyError, ValueError, IndexError):
            return None  # not signed by us: treat it as any other URL
        if not self.verify_download(upload_id, expires, signature):
            raise InvalidInput(
                field, "the upload link is invalid or has expired; upload the file again"
            )
        record = await self.get(upload_id)
        if record is None or record["status"] != "ready" or record["expires_at"] <= utcnow():
            raise InvalidInput(
                field,
                "the uploaded file is not available (never completed or expired); upload it again",
            )
        data = await self.read(upload_id)
        if data is None:
            raise InvalidInput(
                field, "the uploaded file is not available (expired); upload it again")
        return data

    async def purge_expired(self) -> int:
        """Delete expired uploads' files and rows; returns how many went."""
        ids = await self.rows.expired(limit=500)
        for upload_id in ids:
            await self.storage.delete(self.key(upload_id))
            self.path(upload_id).unlink(missing_ok=True)
        await self.rows.delete(ids)
        return len(ids)
