"""The model list: what a client may call, which backend serves each model, and what that
backend tells about it (for Google, the operator's map to Google model ids)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from reelgate import catalog
from reelgate.api.v3.present import envelope
from reelgate.backends import NotConfigured, backend_for, intake_backend
from reelgate.backends.registry import offered_durations, offered_resolutions
from reelgate.settings import Settings

router = APIRouter(prefix="/api/v3")


def _described(model: str, backend: str, settings: Settings) -> dict[str, Any]:
    try:
        return intake_backend(backend, settings).describe(model)
    except NotConfigured:
        return {}


def _local_row(m: catalog.Model) -> dict[str, Any]:
    lm = m.local
    return {
        "model": m.public_id,
        "name": m.name,
        "description": m.description,
        "scenes": list(m.scenes),
        "aspect_ratios": list(catalog.ASPECT_RATIOS),
        "resolutions": [r for r in catalog.RESOLUTIONS if r in lm.sizes],
        "durations": list(lm.allowed_durations),
        "backend": "local",
        "family": lm.family,
        "capabilities": {
            "audio": lm.audio,
            "last_image": lm.takes_last_frame,
            "fps": lm.fps,
            "default_duration": lm.duration_default,
            "frame_step": lm.step_of_frames,
            "max_frames": lm.max_frames,
            "frame_sizes": {r: list(wh) for r, wh in lm.sizes.items()},
            "default_steps": lm.steps,
            "guidance": lm.guidance,
            "audio_fallback": lm.audio_fallback,
            "resolution_fallback": lm.resolution_fallback,
        },
        "serves": list(lm.serves),
        "price_per_second": lm.price_per_second,
    }


@router.get("/models", summary="List the models this server offers")
async def list_models(request: Request) -> dict[str, Any]:
    settings = request.app.state.services.settings
    data = []
    for m in catalog.MODELS.values():
        backend = backend_for(m.name, settings)
        row: dict[str, Any] = {
            "model": m.public_id,
            "name": m.name,
            "description": m.description,
            "scenes": list(m.scenes),
            "aspect_ratios": list(catalog.ASPECT_RATIOS),
            "resolutions": list(catalog.RESOLUTIONS),
            "durations": list(catalog.DURATIONS),
            "backend": backend,
        }
        # What the serving backend can make and tells about the model (Google: its model
        # map; a local model: which declaration serves the name).
        row.update(_described(m.name, backend, settings))
        row["resolutions"] = offered_resolutions(m.name, backend, settings) \
            or row["resolutions"]
        row["durations"] = offered_durations(m.name, backend, settings)
        data.append(row)
    for m in catalog.LOCAL_MODELS.values():
        data.append(_local_row(m))
    return envelope(data)
