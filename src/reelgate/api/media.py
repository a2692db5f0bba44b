"""Serves stored videos behind expiring signed URLs (embedded storage only)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from reelgate.errors import ApiError, NotFound
from reelgate.media.storage import LocalStorage

router = APIRouter(include_in_schema=False)


@router.get("/media/{key:path}")
async def get_media(key: str, request: Request, expires: int = 0,
                    signature: str = "") -> FileResponse:
    services = request.app.state.services
    if not services.signer.verify(key, expires, signature):
        raise ApiError(403, "This download link is invalid or has expired; read the "
                       "prediction again for a fresh link")
    if not isinstance(services.storage, LocalStorage):
        # Object storage hands out its own (presigned) links; nothing is served from here.
        raise NotFound("No such file")
    try:
        path = services.storage.path(key)
    except ValueError:
        raise NotFound("No such file") from None
    if not path.is_file():
        raise NotFound("No such file")
    # FileResponse answers Range requests, so players can seek.
    media_type = "image/jpeg" if path.suffix == ".jpg" else "video/mp4"
    return FileResponse(path, media_type=media_type, filename=path.name)
