"""The dialect port: each API shape reelgate speaks (v3, Google's native Veo API, the OpenAI
Videos API) is one ``Dialect``, one folder under api/ (``api/v3``, ``api/google``,
``api/openai``), and one fixture of the contract suite (tests/contract/test_dialects.py).

A dialect owns everything on the wire: its routes, how it parses a create request into
reelgate's own (``Create``), how it names a field in an error, how it presents a prediction,
its error body and its webhook body. Under every dialect the same things happen:
``intake.accept`` (validation against the catalog, limits, content policy, price and hold),
the same rows, workers, ledger and webhook deliveries. The only trace a dialect leaves is its
name on the prediction row, by which the webhook sender asks it for the payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter

from reelgate.api.hotpath import HotRoute
from reelgate.errors import InvalidInput
from reelgate.media.storage import Storage
from reelgate.store.repo import Prediction


class ErrorBody(Protocol):
    """reelgate's error (status, message, reason: errors.py) in the dialect's JSON body."""

    def __call__(self, status: int, message: str, reason: str | None, /) -> dict[str, Any]:
        ...


class Presenter(Protocol):
    """A prediction as the dialect shows it (a read's answer, or a webhook's body)."""

    def __call__(self, pred: Prediction, base_url: str, storage: Storage, /) -> dict[str, Any]:
        ...


@dataclass(frozen=True)
class Create:
    """A create request in reelgate's own terms: a catalog model, a scene and the create
    body intake validates (requests.CreateBody's fields)."""

    model: str
    scene: str
    body: dict[str, Any]


class RequestParser(Protocol):
    """The dialect's create request (its body, and its path parameters) → ``Create``; an
    ``ApiError`` (400 or 404) for one that names no model or cannot be translated."""

    def __call__(self, body: Any, path: Mapping[str, str], /) -> Create: ...


class InputError(Protocol):
    """intake's ``InvalidInput`` with the field named as this dialect's clients sent it."""

    def __call__(self, exc: InvalidInput, /) -> InvalidInput: ...


def same_names(exc: InvalidInput) -> InvalidInput:
    return exc


@dataclass(frozen=True)
class Dialect:
    name: str  # recorded on the prediction row
    prefixes: tuple[str, ...]  # URL paths it owns (errors there leave in its body)
    routers: tuple[APIRouter, ...]
    parse_create: RequestParser
    present: Presenter
    error_body: ErrorBody
    webhook_payload: Presenter
    input_error: InputError = field(default=same_names)
    # Its polls, answered before FastAPI's router (api/hotpath.py); each is also one of
    # its routers' routes, which documents it.
    hot_routes: tuple[HotRoute, ...] = ()


def all_dialects() -> list[Dialect]:
    """Every dialect, v3 first: it answers for paths no dialect owns (/healthz's 404s...)."""
    # Imported here: the dialect modules import the API's helpers, which import this one.
    from reelgate.api.google import DIALECT as GOOGLE
    from reelgate.api.openai import DIALECT as OPENAI
    from reelgate.api.v3 import DIALECT as V3

    return [V3, GOOGLE, OPENAI]


_BY_NAME: dict[str, Dialect] = {}


def by_name(name: str) -> Dialect:
    """The dialect a prediction row names (v3 for a row written before rows recorded it)."""
    if not _BY_NAME:
        _BY_NAME.update((d.name, d) for d in all_dialects())
    return _BY_NAME.get(name) or _BY_NAME["v3"]


def webhook_payload(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """The webhook body of ``pred``, in the shape of the dialect it came through (what the
    webhook sender is given, so jobs/ never learns a wire shape)."""
    return by_name(pred.dialect).webhook_payload(pred, base_url, storage)


_BY_PREFIX: list[tuple[str, ErrorBody]] = []
_DEFAULT: list[ErrorBody] = []


def register_error_bodies(dialects: list[Dialect]) -> None:
    _BY_PREFIX.clear()
    for d in dialects:
        _BY_PREFIX.extend((p, d.error_body) for p in d.prefixes)
    # Longest prefix first, so /v1beta1 wins over /v1 whatever the order of registration.
    _BY_PREFIX.sort(key=lambda item: -len(item[0]))
    _DEFAULT[:] = [dialects[0].error_body]


def error_body_for(path: str) -> ErrorBody:
    for prefix, body in _BY_PREFIX:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return body
    if not _DEFAULT:
        register_error_bodies(all_dialects())
    return _DEFAULT[0]
