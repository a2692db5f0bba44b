"""Running the API under uvicorn with a graceful drain.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, waits for the requests in
flight, then runs the lifespan's shutdown. Sync-mode requests may be held for minutes, so
left alone they would be cut when uvicorn's grace runs out and their clients would never
learn the prediction's id. Here the signal also starts the services' drain: every held
request answers within ``shutdown_drain_s`` (ended, or as it stands with its id and
``urls.get``), inside uvicorn's grace, and only then does the process exit.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from reelgate.settings import Settings


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self._app.state, "services", None)
        if services is not None and self._loop is not None:
            # Signal handlers run between bytecodes: hand the work to the loop.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(services.begin_drain)
        super().handle_exit(sig, frame)


def run(app: FastAPI, settings: Settings, *, host: str, port: int, log_level: str) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # our JSON (or text) handler formats uvicorn too
        # Long enough for the drain to answer every held request, then a margin.
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) + 10,
    )
    DrainingServer(config, app).run()
