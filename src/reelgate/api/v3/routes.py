"""The v3 predictions API (GPTProto / WaveSpeed form)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from reelgate import intake
from reelgate.api.auth import require_key
from reelgate.api.deps import base_url, json_body, optional_json_body, services_of
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
from reelgate.errors import ApiError, InvalidInput, NotFound
from reelgate.requests import CreateBody, resolve_model_scene
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction

router = APIRouter(prefix="/api/v3", responses=ERROR_RESPONSES)

# A read that would carry a video over the enable_base64_output limit.
TOO_LARGE = {413: {"model": ErrorBody, "description": "enable_base64_output: the video is over "
                   "REELGATE_BASE64_OUTPUT_MAX_BYTES; the message says how to get its URL"}}

# Backends whose workers stop a running prediction between steps when it is cancelled.
CANCELLABLE_WHILE_RUNNING = ("local",)


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


async def render_full(pred: Prediction, request: Request, services: Services,
                      base64_output: bool = True) -> dict[str, Any] | Response:
    """``render``, or, when the completed prediction asked for base64, the same answer with
    its outputs inline (the result and the sync answer; listings and webhooks always carry
    URLs), already serialised."""
    answer = render(pred, request, services)
    if not base64_output:
        return answer
    inline = await inline_outputs(answer["data"], pred, services.storage,
                                  services.settings.base64_output_max_bytes)
    if inline is None:
        return answer
    return Response(json_with_outputs(answer, inline), media_type="application/json")


@router.post(
    "/google/{model}/{scene}",
    summary="Create a prediction",
    **CREATE_ROUTE,
)
async def create_prediction(
    model: str,
    scene: str,
    request: Request,
    webhook: str | None = Query(None, description="URL to POST the prediction to when it ends"),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key",
        description="Any unique string (a UUID): a retry with the same key and body returns "
        "the same prediction (kept with it, at least 24 hours); the same key with another "
        "body is a 409."),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any] | Response:
    services = services_of(request)
    resolve_model_scene(model, scene)  # an unknown route is a 404 whatever the body
    idempotency_key = intake.check_idempotency_key(idempotency_key)
    body = await json_body(request)
    pred, req = await intake.accept(services, key, model, scene, body,
                                    base_url=base_url(request, services), webhook=webhook,
                                    idempotency_key=idempotency_key)
    if not req.enable_sync_mode:
        return render(pred, request, services)
    pred, ended = await _wait_for_end(services, pred)
    if ended:
        return await render_full(pred, request, services)
    # What WaveSpeed clients expect from a sync wait that ran out: still processing, and an
    # error text that says so and where to read the result later.
    answer = render(pred, request, services)
    data = answer["data"]
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
    return answer


@router.post(
    "/local/{model}/{scene}",
    summary="Create a prediction on a model served from this operator's GPUs",
    **CREATE_ROUTE,
)
async def create_local_prediction(
    model: str,
    scene: str,
    request: Request,
    webhook: str | None = Query(None, description="URL to POST the prediction to when it ends"),
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key",
        description="As for Veo models: a retry with the same key and body returns the same "
        "prediction; the same key with another body is a 409."),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any] | Response:
    # The same door as Veo: the row's model is the public path "local/<name>".
    return await create_prediction(f"local/{model}", scene, request, webhook,
                                   idempotency_key=idempotency_key, key=key)


async def _wait_for_end(services: Services, pred: Prediction) -> tuple[Prediction, bool]:
    """Hold a sync-mode request until the prediction ends or the ceiling passes; says
    whether it ended. The prediction is stored already, so nothing here may turn the answer
    into an error: a failed re-read answers with the row as it was. A process told to stop
    (SIGTERM) answers every held request within its drain bound."""
    try:
        current, ended = await services.notifier.wait(
            pred.id, lambda: services.store.get(pred.id), services.settings.sync_timeout_s,
            until=lambda: services.drain_deadline,
        )
    except Exception as exc:  # the database went away meanwhile: answer with what we have
        logging.getLogger("reelgate.api").warning(
            "sync wait for %s ended early (%s)", pred.id, type(exc).__name__)
        return pred, False
    return current or pred, ended and current is not None


async def _read(prediction_id: str, request: Request, key: KeyRecord,
                base64_output: bool = True) -> dict[str, Any] | Response:
    services = services_of(request)
    pred = await services.store.get(prediction_id, account_id=key.account_id)
    if pred is None:
        # Another tenant's prediction is indistinguishable from a missing one.
        raise NotFound(f"Prediction '{prediction_id}' not found")
    return await render_full(pred, request, services, base64_output)


BASE64_QUERY = Query(
    True, alias="enable_base64_output",
    description="false: answer with URLs even if the prediction asked for base64 outputs "
    "(a reelgate extension, e.g. for a video over the inline limit)",
)


@router.get(
    "/predictions/{prediction_id}/result",
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    summary="Read a prediction (Query Result)",
    responses=TOO_LARGE,
)
async def get_result(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key),
    base64_output: bool = BASE64_QUERY,
) -> dict[str, Any] | Response:
    return await _read(prediction_id, request, key, base64_output)


@router.get(
    "/predictions/{prediction_id}", response_model=PredictionEnvelope,
    response_model_exclude_unset=True, summary="Read a prediction", responses=TOO_LARGE,
)
async def get_prediction(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key),
    base64_output: bool = BASE64_QUERY,
) -> dict[str, Any] | Response:
    return await _read(prediction_id, request, key, base64_output)


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
                            key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    services = services_of(request)
    if not await services.store.cancel(prediction_id, key.account_id):
        # A running prediction on a backend that stops between denoising steps: its worker
        # ends it at the next step (the answer still says processing until then).
        if await services.store.request_cancel(prediction_id, key.account_id,
                                               CANCELLABLE_WHILE_RUNNING):
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
                         key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
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
