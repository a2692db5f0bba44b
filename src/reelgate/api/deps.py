"""What every dialect's routes read from a request: the services, the public base URL and a
JSON body. Here rather than in one dialect's routes, so no route module imports another's."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from reelgate.api import body as bounded
from reelgate.errors import InvalidInput
from reelgate.services import Services


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def base_url(request: Request, services: Services) -> str:
    """The public base URL: the configured one, or the one the request was sent to."""
    return services.settings.public_base_url.rstrip("/") or request_base_url(request.scope)


def request_base_url(scope: Any) -> str:
    """``str(request.base_url).rstrip("/")``, read straight from the scope: Starlette builds
    and parses two URL objects for it, a tenth of a poll's time (api/hotpath.py)."""
    scheme = scope.get("scheme", "http")
    root = scope.get("app_root_path", scope.get("root_path", "")).rstrip("/")
    for name, value in scope.get("headers") or ():
        if name == b"host":
            return f"{scheme}://{value.decode('latin-1')}{root}"
    server = scope.get("server")
    if server is None:
        return root
    host, port = server
    if port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}{root}"
    return f"{scheme}://{host}:{port}{root}"


async def json_body(request: Request) -> Any:
    """The request's JSON body (a create needs one: an empty body is a 400)."""
    # Parsed (with bounds) by BoundedInputMiddleware when sent as JSON; clients that send
    # no Content-Type get the same parser here.
    if bounded.SCOPE_KEY in request.scope:
        return request.scope[bounded.SCOPE_KEY]
    raw = await request.body()
    if not raw.strip():
        raise InvalidInput("body", "must be a JSON object with at least a prompt")
    return bounded.parse_json(raw, max_bytes=services_of(request).settings.body_limit)


async def optional_json_body(request: Request) -> Any:
    """The request's JSON body, or ``{}`` when it has none."""
    if bounded.SCOPE_KEY in request.scope:
        return request.scope[bounded.SCOPE_KEY]
    raw = await request.body()
    if not raw.strip():
        return {}
    return bounded.parse_json(raw, max_bytes=services_of(request).settings.body_limit)
