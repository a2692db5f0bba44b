"""The dialect seam: each API shape reelgate speaks (v3, Google's native Veo API, the OpenAI
Videos API) is one ``Dialect``: its routes, how it parses a request into reelgate's own create
body (each dialect's module), how it presents a prediction, and its error body.

Under every dialect the same things happen: ``intake.accept`` (validation against the
catalog, limits, content policy, price and hold), the same rows, workers and ledger. The only
trace a dialect leaves is its name on the prediction row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter

ErrorBody = Callable[[int, str, str], dict[str, Any]]


def v3_error_body(status: int, message: str, type: str) -> dict[str, Any]:
    """The hosted v3 services' body: ``{"error": {"message", "type"}}``."""
    return {"error": {"message": message, "type": type}}


@dataclass(frozen=True)
class Dialect:
    name: str  # recorded on the prediction row
    prefixes: tuple[str, ...]  # URL paths it owns (errors there leave in its body)
    routers: tuple[APIRouter, ...]
    error_body: ErrorBody = v3_error_body


def all_dialects() -> list[Dialect]:
    # Imported here: the dialect modules import the API's helpers, which import this one.
    from reelgate.api import v3
    from reelgate.api.google import DIALECT as GOOGLE
    from reelgate.api.openai import DIALECT as OPENAI

    return [Dialect("v3", ("/api/v3",), (v3.router,)), GOOGLE, OPENAI]


_BY_PREFIX: list[tuple[str, ErrorBody]] = []


def register_error_bodies(dialects: list[Dialect]) -> None:
    _BY_PREFIX.clear()
    for d in dialects:
        _BY_PREFIX.extend((p, d.error_body) for p in d.prefixes)
    # Longest prefix first, so /v1beta1 wins over /v1 whatever the order of registration.
    _BY_PREFIX.sort(key=lambda item: -len(item[0]))


def error_body_for(path: str) -> ErrorBody:
    for prefix, body in _BY_PREFIX:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return body
    return v3_error_body
