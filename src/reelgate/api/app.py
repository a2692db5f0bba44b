"""The ASGI application: routes, error bodies, and the services' lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from reelgate import __version__, metrics
from reelgate.api import account, admin, dialects, errors, media, models, uploads, v3, webhooks
from reelgate.api.body import BoundedInputMiddleware
from reelgate.api.hotpath import HotRoutes
from reelgate.api.openapi import build as build_openapi
from reelgate.services import Services
from reelgate.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        logging.getLogger("reelgate.api").info(
            "serving on the %s event loop", "uvloop" if loop == "uvloop" else "asyncio")
        services = await Services.open(settings, webhook_payload=dialects.webhook_payload)
        app.state.services = services
        # Everything built so far (modules, routes, schemas, services) lives as long as the
        # process: moved out of the collector's sight, so its full collections, which a busy
        # process runs every few seconds, stop walking it (they were the poll's p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="reelgate",
        version=__version__,
        description="Video generation API (v3 predictions) for Google Veo models.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation checks the global providers on every
        # request; off unless the operator asks for it (REELGATE_FASTAPI_TELEMETRY).
        telemetry=None if settings.fastapi_telemetry else
        {"tracing": False, "metrics": False, "logs": False},
    )
    errors.install(app)
    all_dialects = dialects.all_dialects()

    # Innermost: the polls are answered before FastAPI's router (hotpath.py), still inside
    # the bounded-input check and the metrics, which are added after it.
    app.add_middleware(HotRoutes, routes=[r for d in all_dialects for r in d.hot_routes],
                       on_error=errors.response_for)
    # Inside the metrics middleware (added later, so outer): refusals are counted too.
    app.add_middleware(BoundedInputMiddleware, max_body_bytes=settings.body_limit)
    app.add_middleware(metrics.HttpMiddleware)

    # Every dialect's routes (v3, Google native, OpenAI Videos), and its error body by path.
    dialects.register_error_bodies(all_dialects)
    for dialect in all_dialects:
        for router in dialect.routers:
            app.include_router(router)
    app.include_router(models.router)
    app.include_router(account.router)
    app.include_router(admin.router)
    app.include_router(uploads.router)
    app.include_router(webhooks.router)
    app.include_router(webhooks.secret_router)
    app.include_router(media.router)

    from reelgate import console

    console.install(app)

    # An ordinary FastAPI route, after all the others: the benchmarks' reference for what
    # the framework costs a request in this app (bench/bench_api.py), as issue 11 measured.
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """Alive: the process answers. Says nothing about its dependencies."""
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        """Ready: the database, the queue and the storage answer."""
        checks = await request.app.state.services.check()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        await metrics.refresh(request.app.state.services)
        return metrics.exposition()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, v3.EXTRA_SCHEMAS)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def create_app_from_env() -> FastAPI:
    """The app of one process of `reelgate serve --workers N`: uvicorn starts each process
    from this import string, and each reads the same REELGATE_* settings."""
    import os

    from reelgate.api import drain
    from reelgate.logs import configure_logging

    configure_logging(os.environ.get("REELGATE_SERVE_LOG_LEVEL", "info"))
    app = create_app(Settings())
    # SIGTERM drains held requests here too (the supervisor's server is uvicorn's own).
    drain.chain_signals(app)
    return app
