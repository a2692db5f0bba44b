"""The hot path: the few routes clients call many times a second, answered before FastAPI's
router.

A client waiting for a video polls its prediction every second or two, so polls are most of
an API process's requests. FastAPI (0.16x) walks every included router for every request,
with scope bookkeeping per candidate route, and then solves the route's dependencies:
profiled, that was most of a poll's CPU and most of ``/healthz``'s (issue 11). A hot route
is matched by one regular expression here and its endpoint called with the request and its
path parameters. Everything else is the same as for any route:

- the FastAPI route stays declared as usual, with the same endpoint behind it, so OpenAPI
  documents it and a request that misses this layer (none should) is answered alike;
- it runs inside the metrics and bounded-input middlewares (added after this one), and
  ``scope["route"]`` is set so metrics label it by its template as FastAPI's router would;
- an exception becomes the same error body and status as FastAPI's handlers give it
  (``api/errors.response_for``).

Dialects declare their hot routes (``Dialect.hot_routes``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# The endpoint of a hot route: the request and its path parameters → the response.
HotEndpoint = Callable[[Request, dict[str, str]], Awaitable[Response]]
# What answers an exception a hot endpoint raised (the app's error handlers).
ErrorAnswer = Callable[[Request, Exception], Awaitable[Response]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class HotRoute:
    method: str
    path: str  # a template as FastAPI writes it: /api/v3/predictions/{prediction_id}
    endpoint: HotEndpoint
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A parameter matches one path segment, as FastAPI's {name} (no :path converter).
        parts = _PARAM.split(self.path)
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)"
                        for i, p in enumerate(parts))
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))


class HotRoutes:
    """ASGI middleware answering ``routes`` itself; every other request goes on to ``app``.
    Added first, so it is the innermost user middleware."""

    def __init__(self, app: ASGIApp, routes: Sequence[HotRoute], on_error: ErrorAnswer) -> None:
        self.app = app
        self.on_error = on_error
        # By method, then tried in order (a handful: a linear scan is the fastest index).
        self.routes: dict[str, list[HotRoute]] = {}
        for route in routes:
            self.routes.setdefault(route.method, []).append(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for route in self.routes.get(scope["method"], ()):
                match = route.pattern.match(path)
                if match is None:
                    continue
                params = match.groupdict()
                scope["route"] = route  # metrics label the request by route.path
                scope["path_params"] = params
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request, params)
                except Exception as exc:  # noqa: BLE001 - answered as FastAPI's handlers do
                    response = await self.on_error(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
