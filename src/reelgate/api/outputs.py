"""A finished prediction's stored video, for the dialects that hand out the bytes themselves
(Google's file download and inline Vertex videos, OpenAI's content endpoint)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi.responses import FileResponse, RedirectResponse, Response

from reelgate.errors import ApiError, NotFound
from reelgate.media.storage import LocalStorage
from reelgate.services import Services
from reelgate.store.repo import Prediction
from reelgate.store.tables import COMPLETED


def output_key(pred: Prediction) -> str:
    if pred.status != COMPLETED:
        raise NotFound(f"The video of '{pred.id}' is not ready (status {pred.status})")
    if not pred.outputs:
        raise NotFound(f"The video of '{pred.id}' was deleted")
    return pred.outputs[0]


def video_response(services: Services, pred: Prediction, base_url: str) -> Response:
    """The MP4 itself from local storage (Range requests work), or a redirect to the object
    store's presigned URL (as Google's own file service redirects; the SDKs follow it)."""
    key = output_key(pred)
    storage = services.storage
    if isinstance(storage, LocalStorage):
        path = storage.path(key)
        if not path.is_file():
            raise NotFound(f"The video of '{pred.id}' is missing from storage")
        return FileResponse(path, media_type="video/mp4", filename=f"{pred.id}.mp4")
    return RedirectResponse(storage.url(key, base_url), status_code=302)


async def read_video(services: Services, pred: Prediction, base_url: str) -> bytes:
    key = output_key(pred)
    storage = services.storage
    if isinstance(storage, LocalStorage):
        path = storage.path(key)
        if not path.is_file():
            raise NotFound(f"The video of '{pred.id}' is missing from storage")
        return await asyncio.to_thread(path.read_bytes)
    async with httpx.AsyncClient(timeout=120, follow_redirects=True) as client:
        resp = await client.get(storage.url(key, base_url))
    if resp.status_code != 200:
        raise ApiError(502, f"Storage answered {resp.status_code} for the video of '{pred.id}'")
    return resp.content
