"""API-key records kept in memory, so a poll authenticates without a database read.

A revoked key or a disabled account must stop working within a second on every API
process. Two ways tell a process that its copies are stale:

- the database: triggers bump one ``auth_version`` row on every change to a key's or an
  account's access (migration 0004_i11). A request arriving more than half a second after
  the last look re-reads that row (one indexed read, shared by every request waiting at
  that moment) and drops the cache if it moved. This works for every writer, including the
  CLI in another process and plain SQL, in the embedded and the scaled-out mode alike;
- Redis pub/sub, when the deployment has a Redis: the admin operations announce a change
  and every process drops its cache at once, without waiting for its next look.

Only existing keys are cached: an unknown key is looked up each time (and a new key is
therefore usable at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from reelgate.store.hot import HotReads
from reelgate.store.repo import KeyRecord, hash_key

log = logging.getLogger("reelgate")


class KeyCache:
    def __init__(self, hot: HotReads, *, check_every_s: float = 0.5,
                 redis_url: str | None = None, prefix: str = "reelgate") -> None:
        self.hot = hot
        self.check_every_s = check_every_s
        self._records: dict[str, KeyRecord] = {}
        self._version: int | None = None
        self._checked_at = float("-inf")
        self._generation = 0  # moves on every drop; a lookup racing a drop is not kept
        self._refresh: asyncio.Task[None] | None = None
        self._redis_url = redis_url
        self.channel = f"{prefix}:auth-changed"
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._redis_url:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(self._redis_url)
            ready = asyncio.Event()
            self._listener = asyncio.create_task(self._listen(ready), name="key-cache")
            await asyncio.wait_for(ready.wait(), 10)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()

    def drop(self) -> None:
        """Forget every record and look at the version again on the next request."""
        self._records.clear()
        self._generation += 1
        self._checked_at = float("-inf")

    async def announce(self) -> None:
        """Tell every process (through Redis, when there is one) that access changed."""
        self.drop()
        if self._redis is not None:
            await self._redis.publish(self.channel, b"1")

    async def authenticate(self, secret: str) -> KeyRecord | None:
        if time.monotonic() - self._checked_at >= self.check_every_s:
            await self._check_version()
        digest = hash_key(secret)
        record = self._records.get(digest)
        if record is not None:
            return record
        generation = self._generation
        record = await self.hot.key(digest)
        if record is not None and generation == self._generation:
            self._records[digest] = record
        return record

    async def _check_version(self) -> None:
        # One read serves every request that arrives while it runs.
        if self._refresh is None:
            self._refresh = asyncio.create_task(self._read_version())
        task = self._refresh
        try:
            await asyncio.shield(task)
        finally:
            if self._refresh is task and task.done():
                self._refresh = None

    async def _read_version(self) -> None:
        started = time.monotonic()
        version = await self.hot.auth_version()
        if version != self._version:
            self._records.clear()
            self._generation += 1
            self._version = version
        # Counted from before the read: a change committed after this moment is seen by
        # the first request more than check_every_s later.
        self._checked_at = started

    async def _listen(self, ready: asyncio.Event) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.drop()  # anything announced while we were away
                    ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self.drop()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The database check still bounds staleness to check_every_s meanwhile.
                log.exception("key cache lost Redis; retrying")
                await asyncio.sleep(1)
