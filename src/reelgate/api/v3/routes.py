"""The v3 predictions API (GPTProto / WaveSpeed form)."""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from reelgate import intake
from reelgate.api.auth import require_key
from reelgate.api.deps import base_url, json_body, optional_json_body, services_of
from reelgate.api.hotpath import HotRoute
from reelgate.api.v3.history import (
    MAX_PAGE,
    HistoryBody,
    HistoryFilter,
    filter_from_body,
    history_page,
    parse_time,
)
from reelgate.api.v3.present import envelope, inline_outputs, json_with_outputs, present
from reelgate.api.v3.schemas import ERROR_RESPONSES, ErrorBody, PredictionEnvelope
from reelgate.backends.registry import cancellable_backends
from reelgate.errors import ApiError, InvalidInput, NotFound
from reelgate.requests import CreateBody, resolve_model_scene
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction

router = APIRouter(prefix="/api/v3", responses=ERROR_RESPONSES)

# A read that would carry a video over the enable_base64_output limit.
TOO_LARGE: dict[int | str, dict[str, Any]] = {413: {
    "model": ErrorBody, "description": "enable_base64_output: the video is over "
    "REELGATE_BASE64_OUTPUT_MAX_BYTES; the message says how to get its URL"}}

# What every create route (Veo models and the operator's local ones) documents and answers.
CREATE_ROUTE: dict[str, Any] = dict(
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    responses={**TOO_LARGE,
               409: {"model": ErrorBody,
                     "description": "The Idempotency-Key was used with another request"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreateBody"}}
            },
        }
    },
)


def render(pred: Prediction, request: Request, services: Services) -> dict[str, Any]:
    return present(pred, base_url(request, services), services.storage)


# The answer bodies of unfinished predictions, by (row version, base URL), least recently
# used first: a client polls the same unchanged row many times, and for an unfinished
# prediction the body is a function of the row and the base URL alone (no output URLs,
# whose signatures expire, and nothing inline). Bounded: a few MiB at most.
_UNFINISHED_BODIES: dict[tuple[Hashable, str], bytes] = {}
_BODIES_KEPT = 4096


def _unfinished_answer(pred: Prediction, version: Hashable, request: Request,
                       services: Services) -> Response:
    base = base_url(request, services)
    key = (version, base)
    body = _UNFINISHED_BODIES.pop(key, None)
    if body is None:
        # JSONResponse's own rendering, so the bytes are the same as an uncached answer's.
        body = bytes(JSONResponse(present(pred, base, services.storage)).body)
    _UNFINISHED_BODIES[key] = body
    if len(_UNFINISHED_BODIES) > _BODIES_KEPT:
        del _UNFINISHED_BODIES[next(iter(_UNFINISHED_BODIES))]
    return Response(body, media_type="application/json",
                    headers={"Retry-After": str(services.settings.poll_hint_s)})


async def answer(pred: Prediction, request: Request, services: Services,
                 body: dict[str, Any] | None = None, base64_output: bool = True) -> Response:
    """The prediction as a finished response, serialised once: a route returning a dict
    under a response_model is validated and serialised again by FastAPI, which cost a poll
    as much as its database read. The response_model stays on the routes for OpenAPI.

    When the completed prediction asked for base64 (and ``base64_output``), its outputs are
    inline (the result and the sync answer; listings and webhooks always carry URLs).
    An unfinished prediction's answer says when to ask again (Retry-After, in seconds), so
    clients poll no faster than a video can change."""
    headers = None if pred.finished else {"Retry-After": str(services.settings.poll_hint_s)}
    if body is None:
        body = render(pred, request, services)
    if base64_output:
        inline = await inline_outputs(body["data"], pred, services.storage,
                                      services.settings.base64_output_max_bytes)
        if inline is not None:
            return Response(json_with_outputs(body, inline), media_type="application/json",
                            headers=headers)
    return JSONResponse(body, headers=headers)


@dataclass(frozen=True)
class CreateParams:
    """What both create routes (Veo models and the operator's local ones) take besides the
    path and the body."""

    webhook: str | None
    idempotency_key: str | None
    key: KeyRecord


# async: a plain def dependency would be run in a thread of the pool on every create.
async def create_params(
    webhook: str | None = Query(None, description="URL to POST the prediction to when it ends"),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key",
        description="Any unique string (a UUID): a retry with the same key and body returns "
        "the same prediction (kept with it, at least 24 hours); the same key with another "
        "body is a 409."),
    key: KeyRecord = Depends(require_key),
) -> CreateParams:
    return CreateParams(webhook, idempotency_key, key)


@router.post(
    "/google/{model}/{scene}",
    summary="Create a prediction",
    **CREATE_ROUTE,
)
async def create_prediction(
    model: str, scene: str, request: Request, params: CreateParams = Depends(create_params),
) -> Response:
    return await _create(model, scene, request, params)


@router.post(
    "/local/{model}/{scene}",
    summary="Create a prediction on a model served from this operator's GPUs",
    **CREATE_ROUTE,
)
async def create_local_prediction(
    model: str, scene: str, request: Request, params: CreateParams = Depends(create_params),
) -> Response:
    # The same door as Veo: the row's model is the public path "local/<name>".
    return await _create(f"local/{model}", scene, request, params)


async def _create(model: str, scene: str, request: Request, params: CreateParams) -> Response:
    services = services_of(request)
    resolve_model_scene(model, scene)  # an unknown route is a 404 whatever the body
    idempotency_key = intake.check_idempotency_key(params.idempotency_key)
    body = await json_body(request)
    pred, req = await intake.accept(services, params.key, model, scene, body,
                                    base_url=base_url(request, services),
                                    webhook=params.webhook, idempotency_key=idempotency_key)
    if not req.enable_sync_mode:
        return await answer(pred, request, services, base64_output=False)
    pred, ended = await _wait_for_end(services, pred, services.settings.sync_timeout_s)
    if ended:
        return await answer(pred, request, services)
    # What WaveSpeed clients expect from a sync wait that ran out: still processing, and an
    # error text that says so and where to read the result later.
    body = render(pred, request, services)
    data = body["data"]
    if services.drain_deadline is not None:
        data["error"] = (
            f"This server is restarting; the prediction is still {data['status']}. "
            f"Query the result later at {data['urls']['get']}"
        )
    else:
        data["error"] = (
            f"Sync mode timed out after {services.settings.sync_timeout_s:g} s; the "
            f"prediction is still {data['status']}. Query the result later at "
            f"{data['urls']['get']}"
        )
    return await answer(pred, request, services, body)


async def _wait_for_end(services: Services, pred: Prediction,
                        timeout: float) -> tuple[Prediction, bool]:
    """Hold a request (sync mode, or a ``?wait=N`` read) until the prediction ends or
    ``timeout`` passes; says whether it ended. The prediction is stored already, so nothing
    here may turn the answer into an error: a failed re-read answers with the row as it
    was. A process told to stop (SIGTERM) answers every held request within its drain
    bound. Re-reads go through the hot path (store/hot.py), one indexed read each."""
    try:
        current, ended = await services.notifier.wait(
            pred.id, lambda: services.hot.prediction(pred.id, pred.account_id), timeout,
            until=lambda: services.drain_deadline,
        )
    except Exception as exc:  # the database went away meanwhile: answer with what we have
        logging.getLogger("reelgate.api").warning(
            "held read of %s ended early (%s)", pred.id, type(exc).__name__)
        return pred, False
    return current or pred, ended and current is not None


async def _read(prediction_id: str, request: Request, key: KeyRecord,
                wait: float = 0, base64_output: bool = True) -> Response:
    services = services_of(request)
    # One indexed read on the driver (store/hot.py), not through the ORM engine.
    read = await services.hot.prediction_read(prediction_id, key.account_id)
    if read is None:
        # Another tenant's prediction is indistinguishable from a missing one.
        raise NotFound(f"Prediction '{prediction_id}' not found")
    pred, version = read
    if wait > 0 and not pred.finished:
        pred, _ = await _wait_for_end(services, pred,
                                      min(wait, services.settings.sync_timeout_s))
    elif not pred.finished:
        return _unfinished_answer(pred, version, request, services)
    return await answer(pred, request, services, base64_output=base64_output)


BASE64_QUERY = Query(
    True, alias="enable_base64_output",
    description="false: answer with URLs even if the prediction asked for base64 outputs "
    "(a reelgate extension, e.g. for a video over the inline limit)",
)

_WAIT_DOC = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long-poll: hold the request up to this many seconds (capped at the "
    "server's sync-mode ceiling) and answer as soon as the prediction ends. 0 (the default) "
    "answers at once.",
    "schema": {"type": "number", "minimum": 0, "maximum": 3600, "default": 0},
}


def _wait_param(request: Request) -> float:
    # Most polls carry no query string: nothing to parse then.
    raw = request.query_params.get("wait") if request.scope["query_string"] else None
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= 3600:  # also refuses nan
        raise InvalidInput("wait", "must be a number of seconds from 0 to 3600")
    return wait


# The words pydantic reads as a boolean in a query string (what FastAPI accepts for a bool
# parameter), and its error for anything else: the hot path answers as FastAPI would.
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _base64_param(request: Request) -> bool:
    raw = (request.query_params.get("enable_base64_output") if request.scope["query_string"]
           else None)
    if raw is None:
        return True
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise InvalidInput("enable_base64_output",
                       "Input should be a valid boolean, unable to interpret input")


async def read_result(request: Request, params: dict[str, str]) -> Response:
    """GET /result, the hottest route, answered on the hot path (api/hotpath.py): the
    parameters are read here, in the order FastAPI checked them (query, key, wait)."""
    base64_output = _base64_param(request)
    key = await require_key(request)
    return await _read(params["prediction_id"], request, key, _wait_param(request),
                       base64_output)


async def read_prediction(request: Request, params: dict[str, str]) -> Response:
    """GET /predictions/{id}, also a poll: answered on the hot path like the result."""
    key = await require_key(request)
    return await _read(params["prediction_id"], request, key,
                       base64_output=_base64_param(request))


# Declared for OpenAPI (and answer alike if reached through FastAPI's router); the requests
# are answered by read_result and read_prediction on the hot path (HOT_ROUTES).
@router.get(
    "/predictions/{prediction_id}/result",
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    summary="Read a prediction (Query Result)",
    responses=TOO_LARGE,
    openapi_extra={"parameters": [_WAIT_DOC]},
)
async def get_result(prediction_id: str, request: Request,
                     base64_output: bool = BASE64_QUERY) -> Response:
    return await read_result(request, {"prediction_id": prediction_id})


@router.get(
    "/predictions/{prediction_id}", response_model=PredictionEnvelope,
    response_model_exclude_unset=True, summary="Read a prediction", responses=TOO_LARGE,
)
async def get_prediction(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key),
    base64_output: bool = BASE64_QUERY,
) -> Response:
    return await _read(prediction_id, request, key, base64_output=base64_output)


HOT_ROUTES = (
    HotRoute("GET", "/api/v3/predictions/{prediction_id}/result", read_result),
    HotRoute("GET", "/api/v3/predictions/{prediction_id}", read_prediction),
)


# Referenced from the create route's requestBody: documents the body in OpenAPI while the
# route reads it itself (so malformed JSON gets our error body, not the framework's).
EXTRA_SCHEMAS = {
    "CreateBody": CreateBody.model_json_schema(ref_template="#/components/schemas/{model}"),
    "HistoryBody": HistoryBody.model_json_schema(ref_template="#/components/schemas/{model}"),
}


@router.get("/predictions", summary="List the caller's predictions")
async def list_predictions(
    request: Request,
    status: str | None = Query(None, description="created, processing, completed, failed, "
                               "cancelled"),
    model: str | None = Query(None, description="e.g. veo3.1-fast or "
                              "google/veo3.1-fast/text-to-video"),
    since: str | None = Query(None, alias="from", description="YYYY-MM-DD or ISO time"),
    until: str | None = Query(None, alias="to", description="YYYY-MM-DD (inclusive) or ISO"),
    created_after: str | None = Query(None, description="ISO 8601 (as in the POST form)"),
    created_before: str | None = Query(None, description="ISO 8601 (as in the POST form)"),
    # Bounded so the offset, (page - 1) * page_size, always fits the database's integer.
    page: int = Query(1, ge=1, le=MAX_PAGE),
    page_size: int = Query(20, ge=1, le=100),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    services = services_of(request)
    after_name = "created_after" if created_after else "from"
    before_name = "created_before" if created_before else "to"
    f = HistoryFilter.build(
        page=page, page_size=page_size, model=model, status=status,
        created_after=parse_time(created_after or since, after_name),
        created_before=(parse_time(created_before, "created_before") if created_before
                        else parse_time(until, "to", end_of_day=True)),
        after_name=after_name, before_name=before_name,
    )
    return envelope(await history_page(services, key.account_id, f, base_url(request, services)))


@router.post(
    "/predictions",
    summary="List the caller's predictions (WaveSpeed's form: a JSON body)",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HistoryBody"}}
            },
        }
    },
)
async def list_predictions_post(request: Request,
                                key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    services = services_of(request)
    # No body means no filter; a body of JSON null is not the documented object (a 400).
    body = await optional_json_body(request)
    if body is None:
        raise InvalidInput("body", "must be a JSON object (or no body at all)")
    f = filter_from_body(body)
    return envelope(await history_page(services, key.account_id, f, base_url(request, services)))


@router.post("/predictions/{prediction_id}/cancel", response_model=PredictionEnvelope,
             response_model_exclude_unset=True,
             summary="Cancel a prediction that has not started (or a running local one)")
async def cancel_prediction(prediction_id: str, request: Request,
                            key: KeyRecord = Depends(require_key)) -> Response:
    services = services_of(request)
    if not await services.store.cancel(prediction_id, key.account_id):
        # A running prediction on a backend that stops between denoising steps: its worker
        # ends it at the next step (the answer still says processing until then).
        if await services.store.request_cancel(prediction_id, key.account_id,
                                               cancellable_backends(services.settings)):
            return await _read(prediction_id, request, key)
        pred = await services.store.get(prediction_id, account_id=key.account_id)
        if pred is None:
            raise NotFound(f"Prediction '{prediction_id}' not found")
        raise ApiError(400, f"Prediction '{prediction_id}' is {pred.status}: only a "
                       "prediction that has not started can be cancelled")
    await services.notifier.publish(prediction_id)
    return await _read(prediction_id, request, key)


@router.delete("/predictions/{prediction_id}/outputs", response_model=PredictionEnvelope,
               response_model_exclude_unset=True,
               summary="Delete a prediction's stored videos")
async def delete_outputs(prediction_id: str, request: Request,
                         key: KeyRecord = Depends(require_key)) -> Response:
    services = services_of(request)
    keys = await services.store.delete_outputs(prediction_id, key.account_id)
    if keys is None:
        pred = await services.store.get(prediction_id, account_id=key.account_id)
        if pred is None:
            raise NotFound(f"Prediction '{prediction_id}' not found")
        raise ApiError(400, f"Prediction '{prediction_id}' is {pred.status}: outputs can be "
                       "deleted once it has ended")
    for storage_key in keys:
        await services.storage.delete(storage_key)
    return await _read(prediction_id, request, key)
