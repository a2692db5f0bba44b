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
import signal
import threading
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from reelgate.settings import Settings


def _begin_drain(app: FastAPI, loop: asyncio.AbstractEventLoop | None) -> None:
    services = getattr(app.state, "services", None)
    if services is not None and loop is not None:
        # Signal handlers run between bytecodes: hand the work to the loop.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(services.begin_drain)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        _begin_drain(self._app, self._loop)
        super().handle_exit(sig, frame)


def run(app: FastAPI, settings: Settings, *, host: str, port: int, log_level: str,
        backlog: int = 2048) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,  # our JSON (or text) handler formats uvicorn too
        # Long enough for the drain to answer every held request, then a margin.
        timeout_graceful_shutdown=int(settings.shutdown_drain_s) + 10,
        backlog=backlog,
        loop=settings.event_loop,
    )
    DrainingServer(config, app).run()


def chain_signals(app: FastAPI) -> None:
    """The same drain for a process of ``reelgate serve --workers N``, whose server uvicorn's
    supervisor builds (a plain uvicorn.Server). Called from the app factory, which uvicorn
    runs inside its server's signal capture (Server.serve: capture_signals, then
    config.load): the server's SIGTERM/SIGINT handlers are in place, and ours runs the drain
    start before handing the signal on to them. uvicorn restores its own originals on exit."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # built outside a server (a test, a script): nothing to chain
        return
    if threading.current_thread() is not threading.main_thread():
        return  # signals are only handled on the main thread (uvicorn's capture skips too)
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, _previous: Any = previous) -> None:
            _begin_drain(app, loop)
            _previous(signum, frame)

        signal.signal(sig, handler)
