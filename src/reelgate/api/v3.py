"""The v3 predictions API (GPTProto / WaveSpeed form)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Request

from reelgate import catalog, intake
from reelgate.api.auth import require_key
from reelgate.api.schemas import ERROR_RESPONSES, PredictionEnvelope
from reelgate.errors import InvalidInput, NotFound
from reelgate.requests import CreateBody, resolve_model_scene
from reelgate.services import Services
from reelgate.store.repo import KeyRecord, Prediction
from reelgate.store.tables import COMPLETED, FAILED

router = APIRouter(prefix="/api/v3", responses=ERROR_RESPONSES)


def services_of(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def base_url(request: Request, services: Services) -> str:
    return services.settings.public_base_url.rstrip("/") or str(request.base_url).rstrip("/")


def render(pred: Prediction, request: Request, services: Services) -> dict[str, Any]:
    base = base_url(request, services)
    outputs = (
        [services.storage.url(key, base) for key in pred.outputs]
        if pred.status == COMPLETED
        else []
    )
    if pred.status == COMPLETED:
        nsfw = [False] * len(outputs)
    elif pred.status == FAILED and pred.nsfw:
        nsfw = [True]
    else:
        nsfw = []
    ms = pred.execution_ms
    return {
        "code": 200,
        "message": "success",
        "data": {
            "id": pred.id,
            "model": f"{catalog.PROVIDER}/{pred.model}/{pred.scene}",
            "outputs": outputs,
            "urls": {"get": f"{base}/api/v3/predictions/{pred.id}/result"},
            "status": pred.status,
            "error": pred.error if pred.status == FAILED else "",
            "executionTime": ms,
            "timings": {"inference": ms},
            "has_nsfw_contents": nsfw,
            "created_at": pred.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


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
    model: str, scene: str, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    services = services_of(request)
    resolve_model_scene(model, scene)  # an unknown route is a 404 whatever the body
    body = await _json_body(request)
    pred, req = await intake.accept(services, key, model, scene, body)
    if req.enable_sync_mode:
        pred = await _wait_for_end(services, pred)
    return render(pred, request, services)


async def _wait_for_end(services: Services, pred: Prediction) -> Prediction:
    """Hold a sync-mode request until the prediction ends or the ceiling passes."""
    async with services.notifier.subscribe(pred.id) as ended:
        try:
            async with asyncio.timeout(services.settings.sync_timeout_s):
                while True:
                    current = await services.store.get(pred.id)
                    if current is None or current.finished:
                        break
                    ended.clear()
                    await ended.wait()
        except TimeoutError:
            pass
    return await services.store.get(pred.id) or pred


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
    summary="Read a prediction (Query Result)",
)
async def get_result(
    prediction_id: str, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    return await _read(prediction_id, request, key)


@router.get(
    "/predictions/{prediction_id}", response_model=PredictionEnvelope, summary="Read a prediction"
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
