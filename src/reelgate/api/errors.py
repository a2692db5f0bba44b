"""Every error leaves in the body of the dialect that owns the path (v3's ``{"error":
{"message", "type"}}`` unless another dialect claims it), including the framework's own
404/405 and unexpected exceptions (never a stack trace)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reelgate.api.dialects import error_body_for
from reelgate.errors import ApiError

log = logging.getLogger("reelgate.api")

_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list[str]", "none", "function-after"})


def error_response(status: int, message: str, reason: str | None = None,
                   headers: dict[str, str] | None = None, *, path: str = "") -> JSONResponse:
    return JSONResponse(
        error_body_for(path)(status, message, reason),
        status_code=status,
        headers=headers,
    )


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.reason, exc.headers,
                          path=request.scope["path"])


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path,
                  exc_info=exc)
    return error_response(500, "Internal server error", path=request.scope["path"])


async def response_for(request: Request, exc: Exception) -> JSONResponse:
    """What the handlers below answer for ``exc`` raised by a hot route (api/hotpath.py),
    which runs outside FastAPI's exception middleware."""
    if isinstance(exc, ApiError):
        return await api_error(request, exc)
    return await unexpected(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid"}
        # Union members add their type to the location ("amount.str"); the field is enough.
        loc = ".".join(str(p) for p in err["loc"]
                       if p not in ("body", "query", "path") and p not in _UNION_TAGS)
        return error_response(400, f"{loc or 'body'}: {err['msg']}", path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"Not found: {request.method} {request.url.path}"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            from reelgate.api.openapi import allowed_methods

            methods = allowed_methods(request.app, request.url.path)
            if methods:
                headers = {**(headers or {}), "Allow": ", ".join(methods)}
        return error_response(exc.status_code, message, headers=headers,
                              path=request.url.path)

    app.add_exception_handler(Exception, unexpected)
