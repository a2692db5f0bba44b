"""The v3 predictions API (GPTProto / WaveSpeed form)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from reelgate import intake
from reelgate.api.auth import require_key
from reelgate.api.schemas import ERROR_RESPONSES, PredictionEnvelope
from reelgate.errors import ApiError, InvalidInput, NotFound
from reelgate.present import envelope, prediction_data
from reelgate.requests import CreateBody, resolve_model_scene
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction
from reelgate.store.tables import ENDED, UNFINISHED

router = APIRouter(prefix="/api/v3", responses=ERROR_RESPONSES)

# Backends whose workers stop a running prediction between steps when it is cancelled.
CANCELLABLE_WHILE_RUNNING = ("local",)


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def base_url(request: Request, services: Services) -> str:
    return services.settings.public_base_url.rstrip("/") or str(request.base_url).rstrip("/")


def render(pred: Prediction, request: Request, services: Services) -> dict[str, Any]:
    return envelope(prediction_data(pred, base_url(request, services), services.storage))


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise InvalidInput("body", "must be a JSON object with at least a prompt")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("body", f"is not valid JSON ({exc})") from None


@router.post(
    "/google/{model}/{scene}",
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    summary="Create a prediction",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreateBody"}}
            },
        }
    },
)
async def create_prediction(
    model: str,
    scene: str,
    request: Request,
    webhook: str | None = Query(None, description="URL to POST the prediction to when it ends"),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    services = services_of(request)
    resolve_model_scene(model, scene)  # an unknown route is a 404 whatever the body
    body = await _json_body(request)
    pred, req = await intake.accept(services, key, model, scene, body,
                                    base_url=base_url(request, services), webhook=webhook)
    if not req.enable_sync_mode:
        return render(pred, request, services)
    pred, ended = await _wait_for_end(services, pred)
    answer = render(pred, request, services)
    if not ended:
        # What WaveSpeed clients expect from a sync wait that ran out: still processing,
        # and an error text that says so and where to read the result later.
        data = answer["data"]
        data["error"] = (
            f"Sync mode timed out after {services.settings.sync_timeout_s:g} s; the "
            f"prediction is still {data['status']}. Query the result later at "
            f"{data['urls']['get']}"
        )
    return answer


@router.post(
    "/local/{model}/{scene}",
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    summary="Create a prediction on a model served from this operator's GPUs",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/CreateBody"}}
            },
        }
    },
)
async def create_local_prediction(
    model: str,
    scene: str,
    request: Request,
    webhook: str | None = Query(None, description="URL to POST the prediction to when it ends"),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    # The same door as Veo: the row's model is the public path "local/<name>".
    return await create_prediction(f"local/{model}", scene, request, webhook, key)


async def _wait_for_end(services: Services, pred: Prediction) -> tuple[Prediction, bool]:
    """Hold a sync-mode request until the prediction ends or the ceiling passes; says
    whether it ended."""
    async with services.notifier.subscribe(pred.id) as ended:
        try:
            async with asyncio.timeout(services.settings.sync_timeout_s):
                while True:
                    current = await services.store.get(pred.id)
                    if current is None or current.finished:
                        break
                    ended.clear()
                    # Woken by the notifier; the timeout is only a safety net for a lost
                    # notification, not a polling loop.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ended.wait(), 10)
        except TimeoutError:
            pass
    current = await services.store.get(pred.id) or pred
    return current, current.finished


async def _read(prediction_id: str, request: Request, key: KeyRecord) -> dict[str, Any]:
    services = services_of(request)
    pred = await services.store.get(prediction_id, account_id=key.account_id)
    if pred is None:
        # Another tenant's prediction is indistinguishable from a missing one.
        raise NotFound(f"Prediction '{prediction_id}' not found")
    return render(pred, request, services)


@router.get(
    "/predictions/{prediction_id}/result",
    response_model=PredictionEnvelope,
    response_model_exclude_unset=True,
    summary="Read a prediction (Query Result)",
)
async def get_result(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    return await _read(prediction_id, request, key)


@router.get(
    "/predictions/{prediction_id}", response_model=PredictionEnvelope,
    response_model_exclude_unset=True, summary="Read a prediction"
)
async def get_prediction(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    return await _read(prediction_id, request, key)


# Referenced from the create route's requestBody: documents the body in OpenAPI while the
# route reads it itself (so malformed JSON gets our error body, not the framework's).
EXTRA_SCHEMAS = {
    "CreateBody": CreateBody.model_json_schema(ref_template="#/components/schemas/{model}")
}


@router.get("/predictions", summary="List the caller's predictions")
async def list_predictions(
    request: Request,
    status: str | None = Query(None, description="created, processing, completed, failed, "
                               "cancelled"),
    model: str | None = Query(None, description="e.g. veo3.1-fast"),
    since: str | None = Query(None, alias="from", description="YYYY-MM-DD or ISO time"),
    until: str | None = Query(None, alias="to", description="YYYY-MM-DD (inclusive) or ISO"),
    page: int = Query(1, ge=1),
    page_size: int = Query(20, ge=1, le=100),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    from reelgate.api.admin import date_range

    services = services_of(request)
    if status and status not in (*UNFINISHED, *ENDED):
        raise InvalidInput("status", f"must be one of {', '.join((*UNFINISHED, *ENDED))}")
    if model and model.startswith("google/"):
        model = model.split("/")[1]
    start, end = date_range(since, until)
    items, total = await services.store.list_predictions(
        key.account_id, status=status, model=model, since=start, until=end, page=page,
        page_size=page_size,
    )
    base = base_url(request, services)
    return envelope({
        "items": [prediction_data(p, base, services.storage) for p in items],
        "page": page,
        "page_size": page_size,
        "total": total,
    })


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
