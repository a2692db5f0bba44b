"""Google's native Veo API, as the ``google-genai`` SDK speaks it.

- Gemini API (``/v1beta``, what google-genai 2.x uses with an API key):
  ``POST models/{model}:predictLongRunning`` → ``{"name": "models/{model}/operations/{id}"}``,
  ``GET models/{model}/operations/{id}``, ``GET files/{id}:download?alt=media``.
- Vertex AI express mode (``/v1beta1``, what google-genai 3.x uses with ``vertexai=True,
  api_key=...``): ``POST [projects/{p}/locations/{l}/]publishers/google/models/{model}:
  predictLongRunning`` and ``:fetchPredictOperation``; the finished video comes inline
  (``bytesBase64Encoded``), as Vertex AI returns it without an output bucket.

The key comes in ``x-goog-api-key`` (or ``?key=``, or a bearer header). The operation id is
the prediction id, so the same prediction is readable through the v3 API as well.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from reelgate import intake
from reelgate.api.auth import bearer_secret, key_for_secret
from reelgate.api.deps import base_url, json_body, services_of
from reelgate.api.google import translate
from reelgate.api.outputs import read_video, video_response
from reelgate.errors import InvalidInput, NotFound, Unauthorized
from reelgate.store.repo import KeyRecord, Prediction

router = APIRouter(tags=["google"])

_VERTEX = "/v1beta1/publishers/google/models/{model}"
_VERTEX_PROJECT = ("/v1beta1/projects/{project}/locations/{location}"
                   "/publishers/google/models/{model}")
# The SDK takes the file id out of a video uri with this pattern (``[a-z0-9]+`` after files/).
_FILE_ID = re.compile(r"files/([a-z0-9]+)(?::download)?")


async def google_key(request: Request) -> KeyRecord:
    secret = (request.headers.get("x-goog-api-key") or request.query_params.get("key")
              or bearer_secret(request.headers.get("authorization")))
    if not secret:
        raise Unauthorized("Method doesn't allow unregistered callers (callers without "
                           "established identity). Please use API Key or other form of API "
                           "consumer identity to call this API.")
    return await key_for_secret(request, secret.strip())


async def _create(request: Request, model: str, key: KeyRecord, *, name_prefix: str) -> dict:
    services = services_of(request)
    body = await json_body(request)
    create = translate.parse_create(body, {"model": model})
    try:
        pred, _ = await intake.accept(services, key, create.model, create.scene, create.body,
                                      base_url=base_url(request, services), dialect="google")
    except InvalidInput as exc:
        raise translate.input_error(exc) from None
    return {"name": f"{name_prefix}models/{model}/operations/{pred.id}"}


async def _prediction(request: Request, key: KeyRecord, op_id: str) -> Prediction:
    pred = await services_of(request).store.get(op_id, account_id=key.account_id)
    if pred is None:
        raise NotFound(f"Operation {op_id} not found.")
    return pred


# --- Gemini API ------------------------------------------------------------------------------


@router.post("/v1beta/models/{model}:predictLongRunning",
             summary="Google: start a video (Gemini API shape)",
             openapi_extra=translate.PREDICT_OPENAPI)
async def gemini_predict(model: str, request: Request,
                         key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    return await _create(request, model, key, name_prefix="")


@router.get("/v1beta/models/{model}/operations/{op_id}",
            summary="Google: read an operation (Gemini API shape)")
async def gemini_operation(model: str, op_id: str, request: Request,
                           key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    pred = await _prediction(request, key, op_id)
    video = translate.file_uri(base_url(request, services_of(request)), pred.id)
    return translate.operation(pred, f"models/{model}/operations/{op_id}", video=video,
                               vertex=False)


@router.get("/v1beta/files/{rest:path}", summary="Google: download a generated video")
async def gemini_download(rest: str, request: Request,
                          key: KeyRecord = Depends(google_key)) -> Response:
    # ``files/{id}:download?alt=media``. The SDK builds this path from the video uri; given a
    # uri that is not https (a plain-http reelgate), it puts the whole uri in the path, so
    # the id is the last ``files/{id}`` in whatever arrives.
    ids = _FILE_ID.findall(f"files/{rest}")
    if not ids:
        raise NotFound(f"File {rest} not found.")
    pred = await _prediction(request, key, ids[-1])
    return video_response(services_of(request), pred, base_url(request, services_of(request)))


# --- Vertex AI (express mode) ----------------------------------------------------------------


@router.post(f"{_VERTEX}:predictLongRunning", summary="Google: start a video (Vertex AI shape)",
             openapi_extra=translate.PREDICT_OPENAPI)
async def vertex_predict(model: str, request: Request,
                         key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    return await _create(request, model, key, name_prefix="publishers/google/")


@router.post(f"{_VERTEX_PROJECT}:predictLongRunning", include_in_schema=False)
async def vertex_project_predict(project: str, location: str, model: str, request: Request,
                                 key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    return await _create(request, model, key, name_prefix=(
        f"projects/{project}/locations/{location}/publishers/google/"))


async def _fetch(request: Request, key: KeyRecord) -> dict[str, Any]:
    body = await json_body(request)
    name = body.get("operationName") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidInput("operationName", "is required")
    pred = await _prediction(request, key, translate.operation_id(name))
    video = None
    if pred.status == "completed" and pred.outputs:
        services = services_of(request)
        data = await read_video(services, pred, base_url(request, services))
        video = {"bytesBase64Encoded": base64.b64encode(data).decode(),
                 "mimeType": "video/mp4"}
    return translate.operation(pred, name, video=video, vertex=True)


@router.post(f"{_VERTEX}:fetchPredictOperation", summary="Google: read an operation (Vertex AI)")
async def vertex_fetch(model: str, request: Request,
                       key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    return await _fetch(request, key)


@router.post(f"{_VERTEX_PROJECT}:fetchPredictOperation", include_in_schema=False)
async def vertex_project_fetch(project: str, location: str, model: str, request: Request,
                               key: KeyRecord = Depends(google_key)) -> dict[str, Any]:
    return await _fetch(request, key)
