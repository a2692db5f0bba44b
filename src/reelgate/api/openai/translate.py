"""The OpenAI Videos API's request and video object ⇄ reelgate's own. Pure: no I/O.

``size`` ("WIDTHxHEIGHT") maps to an aspect ratio and a resolution of the catalog,
``seconds`` to a duration; what a Veo model cannot make (12 s, 1792x1024, ...) is refused
with a 400 naming the sizes and lengths it can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reelgate import catalog
from reelgate.api.dialects import Create
from reelgate.errors import CONTENT_POLICY, ApiError, InvalidInput
from reelgate.media.storage import Storage
from reelgate.store.repo import Prediction
from reelgate.store.tables import CANCELLED, COMPLETED, CREATED, FAILED, PROCESSING

# OpenAI's documented defaults, so a client that leaves them out gets what it expects.
DEFAULT_SECONDS = 4
DEFAULT_SIZE = "720x1280"
# The model a request without one gets (OpenAI's own default, sora-2, is not served here).
DEFAULT_MODEL = "veo3.1-fast"

# "WIDTHxHEIGHT" → (resolution, aspect ratio), from the catalog's frame sizes.
SIZES: dict[str, tuple[str, str]] = {
    f"{w}x{h}": key for key, (w, h) in catalog.FRAME_SIZES.items()
}

_STATUS = {CREATED: "queued", PROCESSING: "in_progress", COMPLETED: "completed",
           FAILED: "failed", CANCELLED: "failed"}
_PROGRESS = {CREATED: 0, PROCESSING: 50}

_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
                403: "invalid_request_error", 404: "invalid_request_error",
                429: "rate_limit_exceeded"}
_ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}


def error_body(status: int, message: str, reason: str | None) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    code = _ERROR_CODES.get(status)
    if reason == CONTENT_POLICY:
        code = "moderation_blocked"
    elif "Insufficient balance" in message:
        code = "insufficient_quota"
    return {"error": {"message": message,
                      "type": _ERROR_TYPES.get(status, "server_error" if status >= 500
                                               else "invalid_request_error"),
                      "param": None, "code": code}}


def resolve_model(name: Any) -> catalog.Model:
    if name is None or name == "":
        name = DEFAULT_MODEL
    m = catalog.model_from_any_id(str(name))
    if m is None:
        raise InvalidInput("model", f"'{name}' is not offered by this server; models: "
                                    f"{', '.join([*catalog.MODELS, *catalog.GOOGLE_MODEL_IDS])}")
    return m


def parse_create(fields: dict[str, Any]) -> tuple[catalog.Model, str, dict[str, Any]]:
    """The create fields (JSON, or the multipart form with the file as a data: URI) →
    (catalog model, scene, v3 create body)."""
    m = resolve_model(fields.get("model"))
    size = str(fields.get("size") or DEFAULT_SIZE).strip().lower()
    if size not in SIZES:
        raise InvalidInput("size", f"{size} is not a size {m.name} can make; use one of "
                                   f"{', '.join(SIZES)}")
    resolution, aspect_ratio = SIZES[size]
    seconds_raw = fields.get("seconds")
    if seconds_raw is None or seconds_raw == "":
        # OpenAI's default length, unless the size only comes at full length (Veo's rule).
        seconds = (catalog.FULL_LENGTH_S if resolution in catalog.FULL_LENGTH_ONLY_RESOLUTIONS
                   else DEFAULT_SECONDS)
    else:
        try:
            seconds = int(str(seconds_raw).strip())
        except ValueError:
            raise InvalidInput("seconds", f"must be a whole number of seconds (got "
                                          f"{seconds_raw!r})") from None
    if seconds not in catalog.DURATIONS:
        raise InvalidInput("seconds", f"{seconds} is not a length {m.name} can make; use one "
                                      f"of {', '.join(map(str, catalog.DURATIONS))}")
    if resolution in catalog.FULL_LENGTH_ONLY_RESOLUTIONS and seconds != catalog.FULL_LENGTH_S:
        raise InvalidInput("seconds", f"must be {catalog.FULL_LENGTH_S} for size {size} "
                                      f"(got {seconds})")
    body: dict[str, Any] = {"prompt": fields.get("prompt"), "duration": seconds,
                            "resolution": resolution, "aspect_ratio": aspect_ratio}
    scene = "text-to-video"
    ref = fields.get("input_reference")
    if isinstance(ref, dict):
        if ref.get("file_id"):
            raise InvalidInput("input_reference", "file_id references are not offered by "
                                                  "this server; upload the image, or pass "
                                                  "image_url")
        ref = ref.get("image_url")
    if ref:
        if not isinstance(ref, str):
            raise InvalidInput("input_reference", "must be an image file or {\"image_url\": "
                                                  "...}")
        body["image"] = ref
        scene = "image-to-video"
    return m, scene, body


def parse(fields: Any, path: Mapping[str, str]) -> Create:
    """The dialect's request parser: the create fields (a JSON object, or the multipart
    form's fields) → reelgate's create (no path parameters)."""
    if not isinstance(fields, dict):
        raise InvalidInput("body", "must be a JSON object")
    m, scene, body = parse_create(fields)
    return Create(m.name, scene, body)


def openai_field(field: str) -> str:
    return {"duration": "seconds", "resolution": "size", "aspect_ratio": "size",
            "image": "input_reference"}.get(field, field)


def input_error(exc: InvalidInput) -> InvalidInput:
    """intake's error with the field named as the OpenAI client sent it."""
    return InvalidInput(openai_field(exc.field), exc.rule)


def video_object(pred: Prediction) -> dict[str, Any]:
    p = pred.params
    width, height = catalog.frame_size(p["output_resolution"], p["aspect_ratio"])
    error = None
    if pred.status in (FAILED, CANCELLED):
        code = ("moderation_blocked" if pred.nsfw
                else "cancelled" if pred.status == CANCELLED else "generation_failed")
        error = {"code": code, "message": pred.error}
    return {
        "id": pred.id,
        "object": "video",
        "model": pred.model,
        "status": _STATUS.get(pred.status, "failed"),
        "progress": _PROGRESS.get(pred.status, 100),
        "created_at": int(pred.created_at.timestamp()),
        "completed_at": int(pred.completed_at.timestamp()) if pred.completed_at else None,
        # Stored videos do not expire on their own (the owner deletes them).
        "expires_at": None,
        "prompt": p.get("prompt"),
        "seconds": str(p["duration"]),
        "size": f"{width}x{height}",
        "remixed_from_video_id": None,
        "error": error,
    }


def present(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """The dialect's presenter: the video object (retrieve, list and create answer it)."""
    return video_object(pred)


def webhook_event(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """OpenAI's webhook event for a video that ended (``video.completed`` or
    ``video.failed``): the video's id only, as OpenAI sends it; the receiver retrieves it.
    This door takes no webhook today; the shape is here so one needs no other change."""
    ended = pred.completed_at or pred.created_at
    return {"id": f"evt_{pred.id}", "object": "event", "created_at": int(ended.timestamp()),
            "type": "video.completed" if pred.status == COMPLETED else "video.failed",
            "data": {"id": pred.id}}


def not_offered(what: str) -> ApiError:
    return ApiError(400, f"{what} is not offered by this server's video models")


# The create body as OpenAPI shows it (the route reads the body itself, so that a malformed
# one gets OpenAI's error body rather than the framework's).
_CREATE_PROPERTIES: dict[str, Any] = {
    "prompt": {"type": "string"},
    "model": {"type": "string", "description": "A Google model id or a catalog name "
                                               f"(default {DEFAULT_MODEL})."},
    "seconds": {"type": "string", "enum": [str(d) for d in catalog.DURATIONS],
                "description": f"Default {DEFAULT_SECONDS}."},
    "size": {"type": "string", "enum": list(SIZES), "description": f"Default {DEFAULT_SIZE}."},
}
CREATE_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["prompt"], "properties": {
        **_CREATE_PROPERTIES,
        "input_reference": {"type": "string", "format": "binary",
                            "description": "First frame (image-to-video)."}}}},
    "application/json": {"schema": {"type": "object", "required": ["prompt"], "properties": {
        **_CREATE_PROPERTIES,
        "input_reference": {"type": "object", "properties": {"image_url": {
            "type": "string", "description": "https:// URL or data: URI"}}}}}},
}}}
