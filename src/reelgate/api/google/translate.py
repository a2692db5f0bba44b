"""Google's Veo request and operation shapes ⇄ reelgate's own. Pure: no I/O.

The request is what ``predictLongRunning`` takes on both the Gemini API and Vertex AI:
``{"instances": [{"prompt", "image", "lastFrame", "referenceImages"}], "parameters": {...}}``
with images as ``{"bytesBase64Encoded", "mimeType"}``. It becomes the v3 create body (images
as ``data:`` URIs, which intake decodes and checks like any other input).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from reelgate import catalog
from reelgate.api.dialects import Create
from reelgate.errors import ApiError, InvalidInput
from reelgate.media.storage import Storage
from reelgate.store.repo import Prediction
from reelgate.store.tables import CANCELLED, COMPLETED, FAILED

# Parameter → create-body field. Anything not listed (and not in _IGNORED) is refused the
# way Google refuses an unknown parameter.
PARAMS = {
    "aspectRatio": "aspect_ratio",
    "resolution": "resolution",
    "durationSeconds": "duration",
    "negativePrompt": "negative_prompt",
    "seed": "seed",
    "generateAudio": "generate_audio",
    "enhancePrompt": "enhance_prompt",
}
# Accepted and checked, but not part of reelgate's request: personGeneration is the
# operator's setting (REELGATE_GOOGLE_PERSON_GENERATION) on the Google backend.
PERSON_GENERATION = ("allow_all", "allow_adult", "dont_allow")
_IGNORED = {"personGeneration", "sampleCount", "compressionQuality"}

# Create-body field → the name the Google client used, for error messages.
FIELD_NAMES = {
    "prompt": "instances[0].prompt",
    "image": "instances[0].image",
    "last_image": "instances[0].lastFrame",
    "images": "instances[0].referenceImages",
    **{v: f"parameters.{k}" for k, v in PARAMS.items()},
}

GEMINI_RESPONSE_TYPE = ("type.googleapis.com/google.ai.generativelanguage.v1beta."
                        "PredictLongRunningResponse")
VERTEX_RESPONSE_TYPE = "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"

# google.rpc.Code values for an operation's error.
RPC_CANCELLED = 1
RPC_INTERNAL = 13

STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 409: "ABORTED",
    413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def error_body(status: int, message: str, reason: str | None) -> dict[str, Any]:
    """Google's error body: ``{"error": {"code", "message", "status"}}``."""
    return {"error": {"code": status, "message": message,
                      "status": STATUS_NAMES.get(status, "UNKNOWN")}}


def google_field(field: str) -> str:
    """The client's name for one of reelgate's field names (``images[1]`` included)."""
    head, bracket, rest = field.partition("[")
    if head == "images" and bracket:
        return f"instances[0].referenceImages[{rest}"
    return FIELD_NAMES.get(field, field)


def google_rule(rule: str) -> str:
    """A rule's text with reelgate's snake_case field names in the client's words."""
    for ours, theirs in FIELD_NAMES.items():
        if "_" in ours:
            rule = re.sub(rf"\b{ours}\b", theirs, rule)
    return rule


def input_error(exc: InvalidInput) -> InvalidInput:
    """intake's error with the field named the way the caller sent it."""
    return InvalidInput(google_field(exc.field), google_rule(exc.rule))


def _image(value: Any, field: str) -> str:
    """``{"bytesBase64Encoded", "mimeType"}`` → a data: URI (intake decodes and checks it)."""
    if not isinstance(value, dict):
        raise InvalidInput(field, "must be an object with bytesBase64Encoded and mimeType")
    if value.get("gcsUri"):
        raise InvalidInput(field, "gcsUri is not supported by this server (it cannot read "
                                  "Cloud Storage); send the image as bytesBase64Encoded")
    data = value.get("bytesBase64Encoded") or value.get("imageBytes")
    if not isinstance(data, str) or not data:
        raise InvalidInput(field, "bytesBase64Encoded is required")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(field, "bytesBase64Encoded is not valid base64") from None
    mime = value.get("mimeType") or "image/png"
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise InvalidInput(field, f"mimeType must be an image type (got {mime!r})")
    return f"data:{mime};base64,{data}"


def resolve_model(model: str) -> catalog.Model:
    m = catalog.model_from_any_id(model)
    if m is None:
        known = ", ".join([*catalog.GOOGLE_MODEL_IDS, *catalog.MODELS])
        raise ApiError(404, f"models/{model} is not found on this server. Models: {known}")
    return m


def parse_predict(model: str, body: Any) -> tuple[catalog.Model, str, dict[str, Any]]:
    """A ``predictLongRunning`` body → (catalog model, scene, v3 create body)."""
    m = resolve_model(model)
    if not isinstance(body, dict):
        raise InvalidInput("body", "must be a JSON object with instances and parameters")
    instances = body.get("instances")
    if not isinstance(instances, list) or len(instances) != 1 or not isinstance(
            instances[0], dict):
        raise InvalidInput("instances", "must be a list of exactly one instance")
    inst: dict[str, Any] = instances[0]
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("parameters", "must be an object")
    if inst.get("video"):
        raise InvalidInput("instances[0].video", "video extension is not offered by this "
                                                 "server")
    if inst.get("mask"):
        raise InvalidInput("instances[0].mask", "video editing with a mask is not offered by "
                                                "this server")
    out: dict[str, Any] = {"prompt": inst.get("prompt")}
    scene = "text-to-video"
    if inst.get("image") is not None:
        out["image"] = _image(inst["image"], "instances[0].image")
        scene = "image-to-video"
    if inst.get("lastFrame") is not None:
        out["last_image"] = _image(inst["lastFrame"], "instances[0].lastFrame")
    refs = inst.get("referenceImages")
    if refs:
        if not isinstance(refs, list):
            raise InvalidInput("instances[0].referenceImages", "must be a list")
        images = []
        for i, ref in enumerate(refs):
            field = f"instances[0].referenceImages[{i}]"
            if not isinstance(ref, dict):
                raise InvalidInput(field, "must be an object with image and referenceType")
            kind = str(ref.get("referenceType") or "asset").lower()
            if kind != "asset":
                raise InvalidInput(f"{field}.referenceType",
                                   f"only asset references are offered (got {kind!r})")
            images.append(_image(ref.get("image"), f"{field}.image"))
        out["images"] = images
        if scene == "image-to-video":
            raise InvalidInput("instances[0].referenceImages",
                               "cannot be combined with instances[0].image")
        scene = "reference-to-video"
    for name, value in params.items():
        if name in PARAMS:
            if name == "durationSeconds" and isinstance(value, str) and value.isdigit():
                value = int(value)
            out[PARAMS[name]] = value
        elif name not in _IGNORED:
            raise InvalidInput(f"parameters.{name}", "isn't supported by this model")
    pg = params.get("personGeneration")
    if pg is not None and pg not in PERSON_GENERATION:
        raise InvalidInput("parameters.personGeneration",
                           f"must be one of {', '.join(PERSON_GENERATION)}")
    count = params.get("sampleCount")
    if count is not None and count != 1:
        raise InvalidInput("parameters.sampleCount", "must be 1 (one video per request)")
    if not m.supports(scene):
        raise InvalidInput("instances[0]", f"{scene} is not offered by models/{model} "
                                           f"(it offers {', '.join(m.scenes)})")
    return m, scene, out


def parse_create(body: Any, path: Mapping[str, str]) -> Create:
    """The dialect's request parser: ``path["model"]`` is the model of the URL."""
    m, scene, create = parse_predict(path["model"], body)
    return Create(m.name, scene, create)


def operation_id(name: str) -> str:
    """The prediction id at the end of an operation name (``.../operations/{id}``)."""
    return name.rstrip("/").rpartition("/operations/")[2] or name


def operation(pred: Prediction, name: str, *, video: dict[str, Any] | None,
              vertex: bool) -> dict[str, Any]:
    """The long-running operation as Google presents it. ``video`` is the sample's video
    object (a file uri on the Gemini API, inline bytes on Vertex AI) once completed."""
    doc: dict[str, Any] = {"name": name}
    if not pred.finished:
        doc["metadata"] = {"@type": "type.googleapis.com/reelgate.v1.PredictionMetadata",
                           "state": pred.status, "createTime": _time(pred.created_at)}
        return doc
    doc["done"] = True
    if pred.status == COMPLETED and video is not None:
        inner: dict[str, Any] = ({"raiMediaFilteredCount": 0, "videos": [video]} if vertex
                                 else {"generatedSamples": [{"video": video}]})
    elif pred.status == FAILED and pred.nsfw:
        # A content block is a successful operation with no video, as Google reports it.
        inner = {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": [pred.error]}
    else:
        code = RPC_CANCELLED if pred.status == CANCELLED else RPC_INTERNAL
        message = pred.error or ("The video was deleted." if pred.status == COMPLETED
                                 else "The video could not be made.")
        doc["error"] = {"code": code, "message": message}
        return doc
    if vertex:
        doc["response"] = {"@type": VERTEX_RESPONSE_TYPE, **inner}
    else:
        doc["response"] = {"@type": GEMINI_RESPONSE_TYPE, "generateVideoResponse": inner}
    return doc


def file_uri(base_url: str, prediction_id: str) -> dict[str, Any]:
    """The Gemini API's video object: a file to download (files.download follows it)."""
    return {"uri": f"{base_url.rstrip('/')}/v1beta/files/{prediction_id}:download?alt=media",
            "mimeType": "video/mp4"}


def present(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """The prediction as the Gemini API's operations.get answers it (named by the catalog
    model, which the routes accept like Google's ids)."""
    return operation(pred, f"models/{pred.model}/operations/{pred.id}",
                     video=file_uri(base_url, pred.id), vertex=False)


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_IMAGE_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "bytesBase64Encoded": {"type": "string"}, "mimeType": {"type": "string"}}}
# The predictLongRunning body as OpenAPI shows it (the route reads the body itself, so that
# a malformed one gets Google's error body rather than the framework's).
PREDICT_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["instances"], "properties": {
        "instances": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["prompt"], "properties": {
                "prompt": {"type": "string"},
                "image": _IMAGE_SCHEMA,
                "lastFrame": _IMAGE_SCHEMA,
                "referenceImages": {"type": "array", "maxItems": catalog.MAX_REFERENCE_IMAGES,
                                    "items": {"type": "object", "properties": {
                                        "image": _IMAGE_SCHEMA,
                                        "referenceType": {"type": "string",
                                                          "enum": ["asset"]}}}}}}},
        "parameters": {"type": "object", "properties": {
            "aspectRatio": {"type": "string", "enum": list(catalog.ASPECT_RATIOS)},
            "resolution": {"type": "string", "enum": list(catalog.RESOLUTIONS)},
            "durationSeconds": {"type": "integer", "enum": list(catalog.DURATIONS)},
            "negativePrompt": {"type": "string"},
            "seed": {"type": "integer", "minimum": 0},
            "generateAudio": {"type": "boolean"},
            "enhancePrompt": {"type": "boolean"},
            "personGeneration": {"type": "string", "enum": list(PERSON_GENERATION)},
            "sampleCount": {"type": "integer", "enum": [1]}}}}}},
}}}
