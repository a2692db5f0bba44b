"""Uploads: WaveSpeed's ticket + PUT flow, a one-step binary upload, and the download links."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from reelgate.api.auth import require_key
from reelgate.api.deps import base_url
from reelgate.api.v3.present import envelope
from reelgate.errors import ApiError, InvalidInput, NotFound
from reelgate.store.repo import KeyRecord
from reelgate.store.tables import utcnow

router = APIRouter()


class UploadTicketIn(BaseModel):
    # Strict like every body: "123" is not a size.
    model_config = ConfigDict(strict=True)
    filename: str = Field(max_length=1000)
    size: int = Field(description="Bytes")
    content_type: str | None = Field(None, max_length=255)


def _iso(dt: Any) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


@router.post("/api/v3/media/uploads", summary="Start an upload (then PUT the bytes)")
async def create_upload(
    body: UploadTicketIn, request: Request, key: KeyRecord = Depends(require_key)
) -> dict[str, Any]:
    services = request.app.state.services
    record = await services.uploads.create_ticket(
        key.account_id, body.filename, body.size, body.content_type
    )
    base = base_url(request, services)
    return envelope({
        "id": record["id"],
        "upload": {
            "method": "PUT",
            # The signed query belongs to the media layer, the path to this route.
            "url": f"{base}/api/v3/media/uploads/{record['id']}?"
                   f"{services.uploads.put_query(record['id'])}",
            "headers": {"Content-Type": record["content_type"]},
        },
        "download_url": services.uploads.download_url(
            record["id"], record["filename"], record["expires_at"], base
        ),
        "expires_at": _iso(record["expires_at"]),
    })


@router.put(
    "/api/v3/media/uploads/{upload_id}",
    summary="Upload the bytes of a ticket",
    include_in_schema=False,
)
async def put_upload(
    upload_id: str, request: Request, expires: int = 0, signature: str = ""
) -> dict[str, Any]:
    services = request.app.state.services
    # The signed URL is the credential here, like a presigned S3 PUT.
    if not services.uploads.verify_put(upload_id, expires, signature):
        raise ApiError(403, "This upload URL is invalid or has expired; ask for a new one")
    await services.uploads.receive(upload_id, request.stream())
    return envelope()


@router.post("/api/v3/media/upload/binary", summary="Upload a file in one request")
async def upload_binary(request: Request, key: KeyRecord = Depends(require_key)) -> Any:
    """``curl -F file=@frame.png`` (multipart), or the raw bytes with a Content-Type and
    ``?filename=``."""
    services = request.app.state.services
    limit = services.uploads.limits.max_bytes
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_part_size=limit + 1)
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise InvalidInput("file", "is required (multipart field 'file')")
        data = await part.read(limit + 1)
        filename, part_type = part.filename or "upload", part.content_type
    else:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                break
        data = bytes(buf)
        filename, part_type = request.query_params.get("filename", "upload"), ctype
    if not data:
        raise InvalidInput("file", "is empty")
    record = await services.uploads.create_ready(key.account_id, filename, part_type, data)
    return envelope({
        "id": record["id"],
        # WaveSpeed's field: image, video or audio; reelgate takes images only.
        "type": "image",
        "download_url": services.uploads.download_url(
            record["id"],
            record["filename"],
            record["expires_at"],
            base_url(request, services),
        ),
        "filename": record["filename"],
        "size": record["size"],
        "content_type": record["content_type"],
        "expires_at": _iso(record["expires_at"]),
    })


@router.get("/media/uploads/{upload_id}/{filename}", include_in_schema=False)
async def download_upload(
    upload_id: str, filename: str, request: Request, expires: int = 0, signature: str = ""
) -> Response:
    services = request.app.state.services
    if not services.uploads.verify_download(upload_id, expires, signature):
        raise ApiError(403, "This link is invalid or has expired")
    record = await services.uploads.get(upload_id)
    if record is None or record["status"] != "ready" or record["expires_at"] <= utcnow():
        raise NotFound("No such upload")
    # Read through the storage: the PUT may have reached another API process.
    data = await services.uploads.read(upload_id)
    if data is None:
        raise NotFound("No such upload")
    return Response(data, media_type=record["content_type"])
