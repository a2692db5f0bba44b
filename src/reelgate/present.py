"""The prediction object as clients see it, shared by the HTTP answers and webhooks."""

from __future__ import annotations

from typing import Any

from reelgate import catalog
from reelgate.media.storage import Storage
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
        "created_at": pred.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
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


def envelope(data: Any) -> dict[str, Any]:
    return {"code": 200, "message": "success", "data": data}
