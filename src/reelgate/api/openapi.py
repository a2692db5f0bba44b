"""The OpenAPI document, with every status each operation can answer.

FastAPI documents the statuses a route declares, plus a 422 that reelgate never sends (its
validation errors are 400s, api/errors.py). The statuses that come from shared machinery
rather than from one route are added here from what each route depends on, so a route added
later is documented without a change:

- every operation: 400 (the bounded-input middleware refuses a bad query or body on any
  route) and 500;
- a path with parameters: 404;
- the API-key dependency: 401, 403 (disabled account) and 429 (rate limit);
- the admin-token dependency: 401, and 404 while the admin API is disabled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from reelgate.api.admin import require_admin
from reelgate.api.auth import require_key
from reelgate.api.dialects import error_body_for
from reelgate.api.v3 import errors as v3_errors
from reelgate.api.v3.schemas import ErrorBody

DESCRIPTIONS = {
    "400": "Invalid parameters (the message names the field and the rule)",
    "401": "Credentials missing or invalid",
    "403": "Not allowed for this key or account",
    "404": "Not found",
    "429": "Rate or concurrency limit (see Retry-After)",
    "500": "Internal error (never a stack trace)",
}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def statuses(route: APIRoute) -> set[str]:
    found = {"400", "500"}
    if route.dependant.path_params:
        found.add("404")
    calls = set(_calls(route.dependant))
    if require_key in calls:
        found |= {"401", "403", "429"}
    if require_admin in calls:
        found |= {"401", "404"}
    return found


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI >= 0.160 wraps included routers
            yield from api_routes(route.original_router.routes)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (for a 405's Allow header: Starlette's
    names only the first matching route's, though FastAPI registers one route per method)."""
    methods: set[str] = set()
    for route in api_routes(app.routes):
        if route.path_regex.match(path):
            methods |= route.methods or set()
    return sorted(methods)


def build(app: FastAPI, extra_schemas: dict[str, Any]) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(extra_schemas)
    components.setdefault("ErrorBody", ErrorBody.model_json_schema(
        ref_template="#/components/schemas/{model}"))
    for name, sub in ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}").get("$defs", {}).items():
        components.setdefault(name, sub)
    components["ErrorBody"].pop("$defs", None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    # Google's and OpenAI's doors answer errors in their own bodies (api/dialects.py); both
    # are an object with an "error" object, which is all that is promised here for them.
    foreign_error = {"application/json": {"schema": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object"}}}}}
    for route in api_routes(app.routes):
        if not route.include_in_schema:
            continue
        own_body = error_body_for(route.path_format) is v3_errors.error_body
        item = schema["paths"].get(route.path_format, {})
        for method in route.methods or ():
            op = item.get(method.lower())
            if op is None:
                continue
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status in sorted(statuses(route)):
                responses.setdefault(status, {"description": DESCRIPTIONS[status],
                                              "content": error if own_body else foreign_error})
            if not own_body:
                # A route's declared error statuses too (FastAPI filled in v3's body).
                for status, answer in responses.items():
                    if status[0] in "45" and isinstance(answer, dict):
                        answer["content"] = foreign_error
    # Nothing refers to FastAPI's 422 bodies any more.
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
