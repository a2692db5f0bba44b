"""Ends announced through Redis pub/sub, so a sync-mode request held by one API process is
answered when a worker anywhere ends the prediction. One subscription per process fans out
to the local waiters; nobody polls the database in a loop.

Across processes a message can be lost while the subscription reconnects, so waiters also
re-read on a shorter fallback interval, and every local waiter is woken when the
subscription comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from reelgate.jobs.notify.base import NotifierBase

log = logging.getLogger("reelgate.jobs")


class RedisNotifier(NotifierBase):
    # A message published while the subscription reconnects is lost: re-read more often.
    fallback_s: float = 10.0

    def __init__(self, url: str, prefix: str = "reelgate") -> None:
        from redis.asyncio import Redis

        super().__init__()
        self.channel = f"{prefix}:prediction-ended"
        self._redis = Redis.from_url(url)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="redis-notifier")
        try:
            await asyncio.wait_for(self._ready.wait(), 3)
        except TimeoutError:
            # Start anyway (Redis may be restarting): sync waiters re-read their rows until
            # the subscription is up, and the listener keeps trying.
            log.warning("notifier: Redis not reachable yet")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()

    async def publish(self, prediction_id: str) -> None:
        # Local waiters hear it back through the subscription, like everyone else's.
        await self._redis.publish(self.channel, prediction_id)
        self._tell_listeners(prediction_id)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if self._ready.is_set():
                        # Back after a loss: ends published meanwhile were not heard, so
                        # every local waiter reads its row again now.
                        self.waiters.wake_all()
                    self._ready.set()
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        data = message["data"]
                        prediction_id = data.decode() if isinstance(data, bytes) else str(data)
                        self.waiters.wake(prediction_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: waiters fall back to their periodic re-read (wait())
                # until the subscription is back.
                log.warning("notifier lost Redis (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(1)
