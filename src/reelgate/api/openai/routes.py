"""The OpenAI Videos API (``client.videos`` of the official ``openai`` SDK; also the shape
LiteLLM, new-api and SGLang expose): create (JSON or multipart with ``input_reference``),
retrieve, list (cursor pages), download content, delete. Keys as ``Authorization: Bearer``.
The video id is the prediction id: the same prediction is readable through the v3 API."""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from reelgate import intake
from reelgate.api.auth import require_key
from reelgate.api.deps import base_url, json_body, services_of
from reelgate.api.openai import translate
from reelgate.api.outputs import output_key, read_video, video_response
from reelgate.errors import ApiError, InvalidInput, NotFound
from reelgate.media.storage import LocalStorage
from reelgate.media.video import read_frame
from reelgate.store.repo import KeyRecord, Prediction

router = APIRouter(prefix="/v1", tags=["openai"])

# How often the SDK's create_and_poll should ask (it reads this header).
POLL_AFTER_MS = "1000"


async def _form_fields(request: Request) -> dict[str, Any]:
    """The multipart form (what the SDK always sends) as plain fields; the uploaded
    input_reference becomes a data: URI that intake decodes and checks like any image."""
    limit = services_of(request).settings.fetch_max_bytes
    fields: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=20) as form:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                if name != "input_reference":
                    raise InvalidInput(name, "is not a file field")
                data = await value.read(limit + 1)
                if len(data) > limit:
                    raise InvalidInput("input_reference", f"is larger than {limit} bytes")
                if not data:
                    raise InvalidInput("input_reference", "is an empty file")
                mime = value.content_type or "application/octet-stream"
                if not mime.startswith("image/"):
                    # Not every client names the type; intake checks the bytes anyway.
                    mime = "image/png"
                fields["input_reference"] = (
                    f"data:{mime};base64,{base64.b64encode(data).decode()}")
            elif name.startswith("input_reference[") and name.endswith("]"):
                # The SDK sends {"image_url": ...} in a form as input_reference[image_url].
                fields.setdefault("input_reference", {})[name[16:-1]] = value
            else:
                fields[name] = value
    return fields


@router.post("/videos", summary="OpenAI: create a video",
             openapi_extra=translate.CREATE_OPENAPI)
async def create_video(request: Request,
                       key: KeyRecord = Depends(require_key)) -> Response:
    services = services_of(request)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields = await _form_fields(request)
    else:
        fields = await json_body(request)
    create = translate.parse(fields, {})
    try:
        pred, _ = await intake.accept(services, key, create.model, create.scene, create.body,
                                      base_url=base_url(request, services), dialect="openai")
    except InvalidInput as exc:
        raise translate.input_error(exc) from None
    return _video_answer(pred)


def _video_answer(pred: Prediction) -> Response:
    return JSONResponse(translate.video_object(pred),
                        headers={"openai-poll-after-ms": POLL_AFTER_MS})


async def _get(request: Request, key: KeyRecord, video_id: str) -> Prediction:
    pred = await services_of(request).store.get(video_id, account_id=key.account_id)
    if pred is None:
        raise NotFound(f"Video with id '{video_id}' not found.")
    return pred


@router.get("/videos", summary="OpenAI: list videos (cursor pages)",
            responses={404: {"description": "The after= video is not found"}})
async def list_videos(
    request: Request,
    after: str | None = Query(None, description="id of the last video of the previous page"),
    limit: int = Query(20, ge=1, le=100),
    order: str = Query("desc", pattern="^(asc|desc)$"),
    key: KeyRecord = Depends(require_key),
) -> dict[str, Any]:
    page = await services_of(request).store.list_after(
        key.account_id, after=after, limit=limit, ascending=order == "asc")
    if page is None:
        raise NotFound(f"Video with id '{after}' not found (after=).")
    items, has_more = page
    data = [translate.video_object(p) for p in items]
    return {"object": "list", "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more}


@router.get("/videos/{video_id}", summary="OpenAI: retrieve a video")
async def retrieve_video(video_id: str, request: Request,
                         key: KeyRecord = Depends(require_key)) -> Response:
    return _video_answer(await _get(request, key, video_id))


@router.get("/videos/{video_id}/content", summary="OpenAI: download the video or thumbnail")
async def video_content(video_id: str, request: Request,
                        variant: str = Query("video"),
                        key: KeyRecord = Depends(require_key)) -> Response:
    pred = await _get(request, key, video_id)
    services = services_of(request)
    base = base_url(request, services)
    if variant == "video":
        return video_response(services, pred, base)
    if variant == "thumbnail":
        return Response(await _thumbnail(services, pred, base), media_type="image/webp")
    raise InvalidInput("variant", f"must be video or thumbnail (got {variant!r})")


async def _thumbnail(services: Any, pred: Prediction, base: str) -> bytes:
    """The first frame as WebP, decoded from the stored video (PyAV)."""
    key = output_key(pred)

    def encode(path: Path) -> bytes:
        buf = io.BytesIO()
        read_frame(path, 0).save(buf, "WEBP", quality=85)
        return buf.getvalue()

    if isinstance(services.storage, LocalStorage):
        return await asyncio.to_thread(encode, services.storage.path(key))
    data = await read_video(services, pred, base)
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        tmp.write(data)
        tmp.flush()
        return await asyncio.to_thread(encode, Path(tmp.name))


@router.delete("/videos/{video_id}", summary="OpenAI: delete a video")
async def delete_video(video_id: str, request: Request,
                       key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    services = services_of(request)
    keys = await services.store.delete_outputs(video_id, key.account_id)
    if keys is None:
        pred = await _get(request, key, video_id)
        raise ApiError(400, f"Video '{video_id}' is {translate.video_object(pred)['status']}: "
                       "it can be deleted once it has ended")
    for storage_key in keys:
        await services.storage.delete(storage_key)
    return {"id": video_id, "object": "video.deleted", "deleted": True}


@router.post("/videos/{video_id}/remix", summary="OpenAI: remix (not offered)")
async def remix_video(video_id: str, request: Request,
                      key: KeyRecord = Depends(require_key)) -> dict[str, Any]:
    await _get(request, key, video_id)
    raise ApiError(400, "Remix is not offered by this server: none of its video backends can "
                   "edit an existing video. Create a new video with a new prompt instead.")
