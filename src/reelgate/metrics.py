"""Prometheus metrics (prometheus-client). Each process exports its own: API processes at
``/metrics``, workers on ``reelgate worker --metrics-port``; Prometheus adds them up."""

from __future__ import annotations

import functools
import time
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reelgate.store.metrics import unfinished_by_status
from reelgate.store.repo import Store


class _Dispatcher(Protocol):
    @property
    def in_flight(self) -> int | None: ...

    async def depth(self) -> dict[str, int]: ...

    def consumer_states(self) -> dict[str, str]: ...


class Sources(Protocol):
    """What the scrape-time gauges read (services.Services has it). A protocol rather than
    an import: the runner counts into this module, and the wiring imports the runner."""

    @property
    def store(self) -> Store: ...

    @property
    def dispatcher(self) -> _Dispatcher: ...


HTTP_REQUESTS = Counter(
    "reelgate_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "reelgate_http_request_seconds", "Time to answer an HTTP request", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PREDICTIONS_ENDED = Counter(
    "reelgate_predictions_total", "Predictions ended by this process", ["status", "backend"]
)
PREDICTIONS_UNFINISHED = Gauge(
    "reelgate_predictions_unfinished", "Predictions not yet ended, from the database",
    ["status"],
)
QUEUE_DEPTH = Gauge("reelgate_queue_depth", "Dispatches waiting to be run", ["backend"])
GENERATION_PROGRESS = Gauge(
    "reelgate_generation_progress",
    "Fraction of denoising steps done by the prediction this worker runs (local backend)",
    ["backend", "model"],
)
IN_FLIGHT = Gauge("reelgate_worker_in_flight", "Predictions this process is running")
BACKEND_LATENCY = Histogram(
    "reelgate_backend_seconds", "Time a backend took to produce a video", ["backend"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 240, 480, 900),
)
UPSTREAM_ERRORS = Counter(
    "reelgate_backend_errors_total", "Backend failures", ["backend", "kind"]
)
DISPATCH_ERRORS = Counter(
    "reelgate_dispatch_errors_total",
    "Stored predictions whose dispatch failed (the reconciler runs them)",
)
QUEUE_CONSUMER_UP = Gauge(
    "reelgate_queue_consumer_up",
    "1 while this worker's consumer of a backend's stream is connected, 0 while it "
    "reconnects after a broker error", ["backend"],
)
QUEUE_CONSUMER_ERRORS = Counter(
    "reelgate_queue_consumer_errors_total",
    "Broker errors that broke a consumer's read loop (it reconnects with backoff)",
    ["backend"],
)
UNCONFIRMED_SUBMISSIONS = Counter(
    "reelgate_unconfirmed_submissions_total",
    "Predictions found with a submission intended but no upstream handle, by the action "
    "taken (resubmit or fail)", ["backend", "policy"],
)


async def refresh(services: Sources) -> None:
    """Scrape-time gauges: read from the database and the queue when asked, not kept."""
    for status, count in (await unfinished_by_status(services.store)).items():
        PREDICTIONS_UNFINISHED.labels(status).set(count)
    for queue, depth in (await services.dispatcher.depth()).items():
        QUEUE_DEPTH.labels(queue).set(depth)
    in_flight = services.dispatcher.in_flight
    if in_flight is not None:
        IN_FLIGHT.set(in_flight)


def serve_worker_endpoints(port: int, host: str, services: Sources) -> None:
    """A worker's HTTP side, in a thread: Prometheus metrics, and /readyz answering 200 only
    while every queue consumer of this process is connected (503 with each one's state)."""
    import json
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app()

    def app(environ, start_response):  # type: ignore[no-untyped-def]
        if environ.get("PATH_INFO") == "/readyz":
            states = services.dispatcher.consumer_states()
            ok = all(v == "ok" for v in states.values())
            body = json.dumps({"status": "ok" if ok else "unavailable",
                               "checks": {f"consumer:{b}": v for b, v in states.items()}})
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [body.encode()]
        return metrics_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = make_server(host, port, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="worker-http", daemon=True).start()


def exposition() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@functools.lru_cache(maxsize=4096)
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and latency histogram's children for one label set, found once
    (``labels()`` takes a lock and builds a tuple key each time: a tenth of a poll). The
    label sets are bounded: route templates, not paths."""
    return (HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_LATENCY.labels(method, route))


class HttpMiddleware:
    """Counts and times every request, and adds the rate-limit headers that the auth
    dependency left in the request state. Plain ASGI rather than BaseHTTPMiddleware, which
    costs a task and a memory stream per request (measured: a third of a bare request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = scope.get("state", {}).get("rate_headers")
                if extra:
                    # Raw header pairs appended (MutableHeaders re-scans the list per name):
                    # those the answer set itself (a 429's) are kept as they are.
                    raw = message.setdefault("headers", [])
                    have = {name.lower() for name, _ in raw}
                    raw.extend((name.lower().encode("latin-1"), value.encode("latin-1"))
                               for name, value in extra.items()
                               if name.lower().encode("latin-1") not in have)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            # The route template, not the raw path: one series per endpoint, not per id.
            route = getattr(scope.get("route"), "path", "unmatched")
            counter, latency = _series(scope["method"], route, status)
            counter.inc()
            latency.observe(time.perf_counter() - start)
