"""The v3 dialect's presentation: the prediction object (HTTP answers and webhook bodies),
the ``{"code", "message", "data"}`` envelope of every v3 answer, and base64 outputs."""

from __future__ import annotations

import base64
import json
from typing import Any

from reelgate import catalog
from reelgate.errors import ApiError
from reelgate.media.storage import Storage, TooLarge
from reelgate.money import format_money
from reelgate.store.repo import Prediction
from reelgate.store.tables import COMPLETED, FAILED


def prediction_data(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    base = base_url.rstrip("/")
    completed = pred.status == COMPLETED
    outputs = [storage.url(key, base) for key in pred.outputs] if completed else []
    if completed:
        nsfw = [False] * len(outputs)
    elif pred.status == FAILED and pred.nsfw:
        nsfw = [True]
    else:
        nsfw = []
    ms = pred.execution_ms
    data: dict[str, Any] = {
        "id": pred.id,
        "model": f"{catalog.public_model(pred.model)}/{pred.scene}",
        "outputs": outputs,
        "urls": {"get": f"{base}/api/v3/predictions/{pred.id}/result"},
        "status": pred.status,
        # A failure says why; so does a cancellation (the status alone says little).
        "error": pred.error if pred.status not in ("created", "processing", COMPLETED) else "",
        "executionTime": ms,
        "timings": {"inference": ms},
        "has_nsfw_contents": nsfw,
        # strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at a third of its cost (every poll shows it).
        "created_at": pred.created_at.isoformat(timespec="microseconds")[:26] + "Z",
        # Which API the prediction was asked through (v3, google, openai), and what it costs
        # the caller: the held price while unfinished or once completed, 0 once refunded.
        "dialect": pred.dialect,
        "cost": format_money(pred.price if pred.status not in (FAILED, "cancelled")
                                     else 0),
    }
    if pred.progress is not None:
        # Denoising progress from a local worker (step i of n); absent for other backends.
        step, steps = int(pred.progress.get("step", 0)), int(pred.progress.get("steps", 0))
        data["progress"] = {
            "step": step if not completed else steps,
            "steps": steps,
            "percent": 100.0 if completed else round(100.0 * step / max(1, steps), 1),
        }
    return data


# The request fields a webhook body echoes back as "input" (WaveSpeed's webhook payload has
# one). Image inputs are not among them: their URLs are not kept, only the fetched bytes.
INPUT_FIELDS = ("prompt", "aspect_ratio", "resolution", "duration", "enhance_prompt",
                "enable_upsample", "negative_prompt", "seed", "generate_audio")


def webhook_payload(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """The body of a webhook delivery (WaveSpeed's): the prediction object plus ``input``."""
    data = prediction_data(pred, base_url, storage)
    given = {k: pred.params[k] for k in INPUT_FIELDS if pred.params.get(k) is not None}
    return {"id": data["id"], "model": data["model"], "input": given,
            **{k: v for k, v in data.items() if k not in ("id", "model")}}


_NO_DATA: Any = object()


def envelope(data: Any = _NO_DATA) -> dict[str, Any]:
    """A successful v3 answer: ``{"code": 200, "message": "success", "data": ...}`` (without
    ``data`` for the few answers that carry none, such as an upload's PUT)."""
    if data is _NO_DATA:
        return {"code": 200, "message": "success"}
    return {"code": 200, "message": "success", "data": data}


def present(pred: Prediction, base_url: str, storage: Storage) -> dict[str, Any]:
    """A prediction as a v3 read answers it (URLs for the outputs)."""
    return envelope(prediction_data(pred, base_url, storage))


def wants_base64(pred: Prediction) -> bool:
    return bool(pred.params.get("enable_base64_output")) and pred.status == COMPLETED


async def inline_outputs(data: dict[str, Any], pred: Prediction, storage: Storage,
                         max_bytes: int) -> list[bytes] | None:
    """WaveSpeed's ``enable_base64_output``: each output as naked base64 (the standard
    alphabet, no ``data:`` prefix, no line breaks), to stand in place of its URL; None when
    the prediction did not ask for it or has not completed. An output over ``max_bytes`` is
    an HTTP 413 that says how to get it, never a URL in its place."""
    if not wants_base64(pred):
        return None
    encoded = []
    for key in pred.outputs:
        try:
            raw = await storage.read_bytes(key, max_bytes)
        except TooLarge as exc:
            raise ApiError(
                413,
                f"enable_base64_output: the video of prediction {pred.id} is {exc.size} bytes, "
                f"over this server's inline limit of {exc.limit} bytes. The prediction is "
                f"completed and kept; read it as a URL with GET "
                f"{data['urls']['get']}?enable_base64_output=false",
            ) from None
        except FileNotFoundError:
            raise ApiError(404, f"The video of prediction {pred.id} is no longer stored") from None
        encoded.append(base64.b64encode(raw))
        del raw
    return encoded


def json_with_outputs(answer: dict[str, Any], outputs: list[bytes]) -> bytes:
    """The JSON text of ``answer`` with ``data.outputs`` set to ``outputs`` (base64 text).

    Spliced in as bytes rather than put in the dict, because the usual path (validate,
    encode, dump, encode again) holds several copies of each video's text at once
    (bench_base64.py measures it); base64 needs no JSON escaping, so the splice is exact.
    The ``"outputs":[]`` written by json.dumps is the key itself: inside any string value
    its quotes would be escaped."""
    head, sep, tail = json.dumps(
        {**answer, "data": {**answer["data"], "outputs": []}}, separators=(",", ":")
    ).encode().partition(b'"outputs":[]')
    assert sep, "the answer has no outputs field"
    return b"".join([head, b'"outputs":["', b'","'.join(outputs), b'"]', tail])
