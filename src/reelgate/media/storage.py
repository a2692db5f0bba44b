"""Where videos live, and the URLs clients download them from.

The embedded adapter keeps files under ``data_dir/videos`` and hands out expiring HMAC-signed
URLs that the API itself serves (``/media/...``). A configured public media base URL (a CDN or
a web server in front of the same directory) replaces the signed URLs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import shutil
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode


class Storage(Protocol):
    async def put_file(self, key: str, src: Path) -> None: ...
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
