"""Wiring: build each adapter from the settings, start and stop them in order.

The API process and the CLI both go through here, so there is one place that knows which
adapter a URL selects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from reelgate.backends import Backend, build_backends
from reelgate.backends.registry import all_backends, concurrency_of
from reelgate.jobs.dispatch import Dispatch, LocalDispatch, WorkerPool
from reelgate.jobs.notify import LocalNotifier, Notifier
from reelgate.jobs.runner import Runner
from reelgate.jobs.siblings import Siblings
from reelgate.jobs.webhooks import Payload, WebhookSender
from reelgate.keycache import KeyCache
from reelgate.media.fetch import FetchPolicy
from reelgate.media.storage import Storage, UrlSigner, build_storage
from reelgate.media.uploads import UploadLimits, Uploads
from reelgate.policy import ContentPolicy
from reelgate.ratelimit import RateLimiter
from reelgate.settings import Settings
from reelgate.store import migrate
from reelgate.store.db import create_engine, ping
from reelgate.store.hot import HotReads
from reelgate.store.repo import Store
from reelgate.store.uploads import UploadStore


@dataclass
class Services:
    settings: Settings
    store: Store
    storage: Storage
    signer: UrlSigner
    notifier: Notifier
    policy: ContentPolicy
    fetch_policy: FetchPolicy
    limiter: RateLimiter
    uploads: Uploads
    webhooks: WebhookSender
    hot: HotReads
    keys: KeyCache
    # Set once open() has picked it: in-process, or Redis streams.
    dispatcher: Dispatch = field(default_factory=lambda: LocalDispatch(None))
    # serve --workers N (embedded): how the in-process notifier and dispatch reach the
    # sibling processes.
    siblings: Siblings | None = None
    backends: dict[str, Backend] = field(default_factory=dict)
    # Set when the process was told to stop: held sync-mode requests answer by then.
    drain_deadline: float | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _workers_lock: Any = None

    @classmethod
    async def open(cls, settings: Settings, *, run_workers: bool | None = None,
                   webhook_payload: Payload | None = None) -> Services:
        """Open every adapter. ``run_workers`` None means: as the settings say (embedded
        servers run workers in-process; with a Redis queue, API processes do not).
        ``webhook_payload`` (api/dialects.webhook_payload) is what a process that runs
        workers POSTs to webhooks: given by the caller, so that jobs/ and this module never
        import the API's dialects."""
        settings.ensure_dirs()
        from reelgate.backends.local.config import install as install_local_models
        from reelgate.backends.local.config import load_local_settings

        # Declared local models join the catalog (routes, validation, prices, model list).
        install_local_models(load_local_settings().models_file)
        # On PostgreSQL the poll's point reads (store/hot.py) have a small pool of their own,
        # taken out of the engine's overflow so that a process stays within
        # REELGATE_DB_POOL_SIZE + _DB_MAX_OVERFLOW connections (none left: they read
        # through the engine).
        hot_pool = (min(2, settings.db_max_overflow)
                    if settings.resolved_database_url.startswith("postgresql") else 0)
        engine = create_engine(settings.resolved_database_url,
                               pool_size=settings.db_pool_size,
                               max_overflow=settings.db_max_overflow - hot_pool,
                               pool_timeout_s=settings.db_pool_timeout_s)
        await migrate.upgrade(engine)
        store = Store(engine)
        signer = UrlSigner(settings.signing_key, settings.media_url_ttl_s)
        storage = build_storage(
            settings.storage_url,
            local_root=settings.videos_dir,
            signer=signer,
            public_base_url=settings.public_media_base_url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key=settings.s3_access_key_id,
            secret_key=settings.s3_secret_access_key,
            presign_ttl_s=settings.media_url_ttl_s,
            presign_endpoint_url=settings.s3_presign_endpoint_url,
        )
        hot = HotReads(engine, pg_pool_size=hot_pool)
        await hot.start()
        redis_url = settings.queue_url if settings.queue_url.startswith(
            ("redis://", "rediss://")) else None
        keys = KeyCache(hot, redis_url=redis_url, prefix=settings.queue_prefix)
        await keys.start()
        store.on_access_change.append(keys.announce)
        distributed = settings.queue_url.startswith(("redis://", "rediss://"))
        # Several API processes on one data dir (embedded) tell each other of ends and new
        # work through Unix sockets; scaled out, Redis carries both.
        siblings = (Siblings(settings.data_dir / "notify")
                    if not distributed and settings.serve_workers > 1 else None)
        if siblings is not None:
            await siblings.start()
        notifier: Notifier
        if distributed:
            # Imported only scaled out: the Redis adapters bring taskiq and aiohttp (~0.4 s
            # of every process's start-up).
            from reelgate.jobs.notify.redis import RedisNotifier

            notifier = RedisNotifier(settings.queue_url, settings.queue_prefix)
        else:
            notifier = LocalNotifier(siblings)
        services = cls(
            settings=settings,
            store=store,
            storage=storage,
            signer=signer,
            notifier=notifier,
            policy=ContentPolicy.from_settings(settings),
            limiter=RateLimiter(settings.rate_limit_storage_url),
            fetch_policy=FetchPolicy.from_settings(settings),
            uploads=Uploads(
                UploadStore(store),
                settings.uploads_dir,
                signer,
                UploadLimits(settings.upload_max_bytes, settings.upload_ttl_s,
                             settings.upload_quota_bytes),
                storage,
            ),
            webhooks=WebhookSender(
                store,
                storage,
                FetchPolicy.from_settings(settings),
                payload=webhook_payload,
                public_base_url=settings.public_base_url,
                max_attempts=settings.webhook_max_attempts,
                retry_base_s=settings.webhook_retry_base_s,
                timeout_s=settings.webhook_timeout_s,
            ),
            hot=hot,
            keys=keys,
            siblings=siblings,
        )
        await notifier.start()
        if run_workers is None:
            # Embedded: the server runs its own workers. Scaled out: `reelgate worker` does.
            run_workers = settings.run_workers if settings.run_workers is not None else (
                not distributed
            )
            if run_workers and not distributed and settings.serve_workers > 1:
                # Several API processes on one data dir: the first to take the lock runs
                # the workers; it holds the lock as long as it lives.
                services._workers_lock = _try_lock(settings.data_dir / "workers.lock")
                run_workers = services._workers_lock is not None
        if run_workers:
            if webhook_payload is None:
                raise ValueError("a process that runs workers delivers webhooks: give "
                                 "Services.open the dialects' webhook_payload")
            # Connections of their own for submission intents and upstream handles (two),
            # and for lease renewals (one); only processes that run work write them.
            store.checkpoint_engine = create_engine(
                settings.resolved_database_url, pool_size=1, max_overflow=1,
                pool_timeout_s=settings.db_pool_timeout_s)
            store.lease_engine = create_engine(
                settings.resolved_database_url, pool_size=1, max_overflow=0,
                pool_timeout_s=settings.db_pool_timeout_s)
            services.backends = build_backends(settings)
            if settings.only_backends:
                services.backends = {
                    k: v for k, v in services.backends.items() if k in settings.only_backends
                }
            # Started once per worker process (clients, render pools); closed in close().
            for backend in services.backends.values():
                await backend.start()
            runner = Runner(settings=settings, store=store, storage=storage,
                            backends=services.backends, notifier=notifier)
            # Each backend runs as many predictions at once as the operator set for it, else
            # as it declares, else the settings' default for it; in either dispatcher.
            pool = WorkerPool(runner, store, backends=services.backends,
                              default_concurrency=partial(concurrency_of, settings=settings),
                              concurrency_overrides=settings.backend_concurrency,
                              lease_ttl_s=settings.lease_ttl_s,
                              reconcile_interval_s=settings.reconcile_interval_s)
        else:
            pool = None
        if distributed:
            from reelgate.jobs.dispatch.redis import RedisDispatch, RedisQueue

            services.dispatcher = RedisDispatch(
                RedisQueue(settings.queue_url, all_backends(settings),
                           prefix=settings.queue_prefix),
                pool, dispatch_grace_s=settings.dispatch_grace_s)
        else:
            services.dispatcher = LocalDispatch(pool, siblings)
        await services.dispatcher.start()
        if run_workers:
            notifier.listeners.append(lambda _id: services.webhooks.wakeup.set())
            services._tasks = [
                asyncio.create_task(services.webhooks.run_forever(1.0), name="webhooks"),
                asyncio.create_task(services._janitor(), name="janitor"),
            ]
        return services

    async def _janitor(self) -> None:
        """Housekeeping that no request waits on: expired uploads."""
        while True:
            try:
                await self.uploads.purge_expired()
            except asyncio.CancelledError:
                raise
            except Exception:
                logging.getLogger("reelgate").exception("janitor pass failed")
            await asyncio.sleep(300)

    async def check(self) -> dict[str, str]:
        """Reachability of each dependency, for /readyz: "ok" or what went wrong."""
        async def probe(name: str, coro: Any) -> tuple[str, str]:
            try:
                await asyncio.wait_for(coro, 5)
                return name, "ok"
            except Exception as exc:
                return name, f"{type(exc).__name__}: {exc}"[:200]

        probes = [probe("database", ping(self.store.engine)),
                  probe("storage", self.storage.check())]
        checks = dict(await asyncio.gather(*probes))
        # The queue (scaled out), and each consumer until it has (re)connected.
        checks.update(await self.dispatcher.check())
        return checks

    def begin_drain(self) -> None:
        """The process was told to stop: every held sync-mode request answers within
        ``shutdown_drain_s`` (ended, or as it stands, with its id)."""
        if self.drain_deadline is None:
            loop = asyncio.get_running_loop()
            self.drain_deadline = loop.time() + self.settings.shutdown_drain_s
            logging.getLogger("reelgate").info(
                "draining: held requests answer within %g s", self.settings.shutdown_drain_s)
            # Waiters re-read their rows now, and again when their prediction ends or the
            # bound passes.
            self.notifier.wake_all()
            loop.call_later(self.settings.shutdown_drain_s, self.notifier.wake_all)

    async def dispatch(self, prediction_id: str, backend: str) -> None:
        await self.dispatcher.dispatch(prediction_id, backend)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.dispatcher.stop()
        for backend in self.backends.values():
            await backend.close()
        await self.notifier.close()
        if self.siblings is not None:
            await self.siblings.close()
        await self.keys.close()
        await self.hot.close()
        await self.store.close()
        await self.store.engine.dispose()
        for extra in {self.store.checkpoint_engine, self.store.lease_engine}:
            if extra is not self.store.engine:
                await extra.dispose()
        if self._workers_lock is not None:
            self._workers_lock.close()  # closing the file releases the lock


def _try_lock(path: Path) -> IO[bytes] | None:
    """An exclusive lock on ``path`` if nobody holds it, else None. The kernel frees it when
    the holder's process ends, however it ends."""
    import fcntl

    f = open(path, "ab")  # noqa: SIM115 - held open as long as the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f
