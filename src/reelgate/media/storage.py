"""Where videos and input images live, and the URLs clients download videos from.

Inputs (images fetched at intake, user uploads) go through the same protocol as outputs
(``put_bytes``/``get_bytes``), so API and worker processes share nothing but the storage:
a bucket, or one directory named by ``REELGATE_STORAGE_URL``.

The embedded adapter keeps files under ``data_dir/videos`` and hands out expiring HMAC-signed
URLs that the API itself serves (``/media/...``). A configured public media base URL (a CDN or
a web server in front of the same directory) replaces the signed URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import shutil
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit


class StorageKeyMissing(LookupError):
    """``get_bytes`` of a key that holds nothing."""


class Storage(Protocol):
    async def put_file(self, key: str, src: Path) -> None: ...
    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None: ...
    async def get_bytes(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...
    async def check(self) -> None: ...
    def url(self, key: str, base_url: str) -> str: ...
    async def read_bytes(self, key: str, max_bytes: int) -> bytes: ...


class TooLarge(Exception):
    """An object is bigger than the caller may hold in memory; nothing was read."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        super().__init__(f"{key} is {size} bytes, over the limit of {limit} bytes")
        self.key, self.size, self.limit = key, size, limit


def _safe_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"bad storage key: {key!r}")
    return key


class UrlSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def signature(self, key: str, expires: int) -> str:
        msg = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def query(self, key: str, now: float | None = None) -> str:
        # Round expiry up to the next 5 minutes so repeated reads of a prediction return
        # the same URL (clients and caches see a stable link for a while).
        now = time.time() if now is None else now
        expires = (int(now + self.ttl_s) // 300 + 1) * 300
        return urlencode({"expires": expires, "signature": self.signature(key, expires)})

    def verify(self, key: str, expires: int, signature: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if expires < now:
            return False
        return hmac.compare_digest(self.signature(key, expires), signature)


class LocalStorage:
    def __init__(self, root: Path, signer: UrlSigner, public_base_url: str = "") -> None:
        self.root = root
        self.signer = signer
        self.public_base_url = public_base_url.rstrip("/")

    def path(self, key: str) -> Path:
        return self.root / _safe_key(key)

    async def put_file(self, key: str, src: Path) -> None:
        # In a thread: an fsync can take 100s of ms on a busy disk, and on the event loop
        # it held up every answer of the process (found profiling held sync requests).
        await asyncio.to_thread(self._put_file, key, src)

    def _put_file(self, key: str, src: Path) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        # Copy, fsync, then rename: a crash leaves either no file or the whole file, and
        # the row says "completed" only after this returns.
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)

    async def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write_bytes, self.path(key), data)

    @staticmethod
    def _write_bytes(dest: Path, data: bytes) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.part")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self.path(key).read_bytes)
        except FileNotFoundError:
            raise StorageKeyMissing(key) from None

    async def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def check(self) -> None:
        """Raise unless the directory exists and takes files."""
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".ready-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()

    async def read_bytes(self, key: str, max_bytes: int) -> bytes:
        """The whole object, for answers that carry it inline (enable_base64_output).
        The size is checked first, so an oversized file is never read; a missing one
        raises FileNotFoundError."""
        path = self.path(key)
        size = path.stat().st_size
        if size > max_bytes:
            raise TooLarge(key, size, max_bytes)
        return await asyncio.to_thread(path.read_bytes)

    def url(self, key: str, base_url: str) -> str:
        if self.public_base_url:
            return f"{self.public_base_url}/{quote(key)}"
        return f"{base_url.rstrip('/')}/media/{quote(key)}?{self.signer.query(key)}"


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def build_storage(
    url: str,
    *,
    local_root: Path,
    signer: UrlSigner,
    public_base_url: str = "",
    endpoint_url: str = "",
    region: str = "",
    access_key: str = "",
    secret_key: str = "",
    presign_ttl_s: int = 24 * 3600,
    presign_endpoint_url: str = "",
) -> Storage:
    """Pick the storage adapter by the form of ``url``.

    Empty: LocalStorage under ``local_root``. A filesystem path (or ``file://`` URL):
    LocalStorage there. ``s3://bucket/prefix``: S3Storage. Anything else is refused, so a
    typo such as ``s4://`` fails at start-up instead of writing videos to a directory
    named after it.
    """
    url = url.strip()
    if not url:
        return LocalStorage(local_root, signer, public_base_url)
    if url.startswith("s3://"):
        # Imported here: boto3 costs every process ~0.2 s to import, and only S3 needs it.
        from reelgate.media.s3 import S3Storage

        return S3Storage(
            url,
            endpoint_url=endpoint_url,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            presign_ttl_s=presign_ttl_s,
            public_base_url=public_base_url,
            presign_endpoint_url=presign_endpoint_url,
        )
    if url.startswith("file://"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URL with a remote host: {url!r}")
        return LocalStorage(Path(parts.path), signer, public_base_url)
    if _SCHEME_RE.match(url):
        raise ValueError(f"unsupported storage URL {url!r}: use a path or s3://bucket/prefix")
    return LocalStorage(Path(url), signer, public_base_url)
